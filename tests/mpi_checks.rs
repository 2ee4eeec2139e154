//! The MPI build (`--features mpi`) under `mpirun -np 1, 2, 3`: a surface with a
//! curvature grid, a bounds sweep and `hessian --gn-norms --trace` give byte-identical
//! results to the build without MPI; a failing or killed rank ends the job within
//! seconds with a non-zero exit status and a message naming the rank.
//!
//! The MPI binary is `$LANDSCAPE_MPI_BIN`, else `target/mpi/release/landscape` (built by
//! `.ci/run` with `CARGO_TARGET_DIR=target/mpi cargo build --release --features mpi`).
//! Without it or without `mpirun` the tests print a notice and pass, unless
//! `LANDSCAPE_REQUIRE_MPI=1` (set by `.ci/run` after installing OpenMPI): then they fail.
//!
//! Compared: the numeric outputs byte for byte (the surface's safetensors tensors and
//! their data, the CSV files), and the JSON results with the `provenance` record and
//! the wall-clock fields (`*seconds`, `*_s`) removed; the provenance's `ranks` is
//! checked separately.

use super::common::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn mpi_setup() -> Option<(PathBuf, PathBuf)> {
    let required = std::env::var_os("LANDSCAPE_REQUIRE_MPI").is_some_and(|v| v == "1");
    let bin = std::env::var_os("LANDSCAPE_MPI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mpi/release/landscape")
        });
    let mpirun = PathBuf::from("mpirun");
    let have_mpirun = Command::new(&mpirun)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if bin.exists() && have_mpirun {
        return Some((bin, mpirun));
    }
    let why = format!(
        "MPI checks: {} (MPI binary {}, mpirun {})",
        if required {
            "REQUIRED but unavailable"
        } else {
            "SKIPPED"
        },
        bin.display(),
        if have_mpirun { "found" } else { "not found" }
    );
    assert!(!required, "{why}");
    eprintln!("{why}");
    None
}

fn mpirun(mpirun: &Path, np: usize, bin: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(mpirun)
        .args(["--allow-run-as-root", "--oversubscribe", "-np"])
        .arg(np.to_string())
        .arg(bin)
        .args(args)
        .current_dir(dir)
        .env("SOURCE_DATE_EPOCH", "1")
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap()
}

fn plain(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_landscape"))
        .args(args)
        .current_dir(dir)
        .env("SOURCE_DATE_EPOCH", "1")
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Removes the wall-clock fields, recursively.
fn strip_times(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|k, _| !(k.ends_with("seconds") || k.ends_with("_s")));
            m.values_mut().for_each(strip_times);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_times),
        _ => {}
    }
}

/// The JSON results without provenance and times, and the provenance's rank count.
fn results_json(path: &Path) -> (String, u64) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ranks = v["provenance"]["ranks"].as_u64().expect("ranks recorded");
    v.as_object_mut().unwrap().remove("provenance");
    strip_times(&mut v);
    (v.to_string(), ranks)
}

/// A safetensors file's tensor table (without `__metadata__`) and data bytes.
fn tensors(path: &Path) -> (serde_json::Value, Vec<u8>) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    h.as_object_mut().unwrap().remove("__metadata__");
    (h, b[8 + n..].to_vec())
}

#[test]
fn mpi_results_do_not_depend_on_the_rank_count() {
    let Some((bin, run)) = mpi_setup() else {
        return;
    };
    let d = TempDir::new("mpi");
    ok(&plain(
        &d,
        &[
            "train",
            "--data",
            "digits",
            "--hidden",
            "6",
            "--epochs",
            "2",
            "--seed",
            "1",
            "--out",
            "a.safetensors",
        ],
    ));
    let surface: &[&str] = &[
        "surface",
        "--model",
        "../a.safetensors",
        "--data",
        "digits",
        "--samples",
        "150",
        "--grid=-1:1:7x-1:1:5",
        "--curvature-grid=-1:1:2x-1:1:2",
        "--threads",
        "1",
        "--out",
        "s.safetensors",
        "--json",
        "s.json",
    ];
    let sweep: &[&str] = &[
        "bounds-sweep",
        "--data",
        "digits",
        "--widths",
        "4,6",
        "--depths",
        "1,2",
        "--samples",
        "80",
        "--full-samples",
        "8",
        "--threads",
        "1",
        "--csv",
        "b.csv",
        "--json",
        "b.json",
    ];
    let hessian: &[&str] = &[
        "hessian",
        "--model",
        "../a.safetensors",
        "--data",
        "digits",
        "--train-size",
        "300",
        "--gn-norms",
        "gn.csv",
        "--trace",
        "--probes",
        "6",
        "--threads",
        "1",
        "--json",
        "h.json",
    ];
    let reference = d.join("ref");
    std::fs::create_dir_all(&reference).unwrap();
    for args in [surface, sweep, hessian] {
        ok(&plain(&reference, args));
    }
    for np in 1..=3 {
        let out = d.join(format!("np{np}"));
        std::fs::create_dir_all(&out).unwrap();
        for args in [surface, sweep, hessian] {
            ok(&mpirun(&run, np, &bin, &out, args));
        }
        assert_eq!(
            tensors(&reference.join("s.safetensors")),
            tensors(&out.join("s.safetensors")),
            "surface tensors at -np {np}"
        );
        for csv in ["b.csv", "gn.csv"] {
            assert_eq!(
                std::fs::read(reference.join(csv)).unwrap(),
                std::fs::read(out.join(csv)).unwrap(),
                "{csv} at -np {np}"
            );
        }
        for json in ["s.json", "b.json", "h.json"] {
            let (a, ra) = results_json(&reference.join(json));
            let (b, rb) = results_json(&out.join(json));
            assert_eq!(a, b, "{json} at -np {np}");
            assert_eq!((ra, rb), (1, np as u64), "{json}: ranks recorded");
        }
    }
}

#[test]
fn mpi_failing_or_killed_rank_ends_the_job() {
    let Some((bin, run)) = mpi_setup() else {
        return;
    };
    let d = TempDir::new("mpi-fail");
    ok(&plain(
        &d,
        &[
            "train",
            "--data",
            "digits",
            "--hidden",
            "6",
            "--epochs",
            "1",
            "--out",
            "a.safetensors",
        ],
    ));
    let args: &[&str] = &[
        "surface",
        "--model",
        "a.safetensors",
        "--data",
        "digits",
        "--samples",
        "100",
        "--grid=-1:1:5x-1:1:40",
        "--threads",
        "1",
        "--json",
        "s.json",
    ];
    for (fault, needle) in [
        ("1:fail", "error: rank 1 of 3: injected failure"),
        ("2:kill", "rank 2"),
    ] {
        let t = Instant::now();
        let o = Command::new(&run)
            .args(["--allow-run-as-root", "--oversubscribe", "-np", "3"])
            .arg(&bin)
            .args(args)
            .current_dir(&*d)
            .env("LANDSCAPE_TEST_RANK_FAULT", fault)
            .output()
            .unwrap();
        let err =
            String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
        assert!(!o.status.success(), "{fault}: the job succeeded");
        assert!(err.contains(needle), "{fault}: no '{needle}' in: {err}");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{fault}: took {:?}",
            t.elapsed()
        );
        assert!(!d.join("s.json").exists(), "{fault}: an output was written");
    }
}

/// Every file under `dir` (relative path, sorted), as comparable content: JSON without
/// `provenance` and wall-clock fields, CSV without the columns named `*seconds`,
/// safetensors as their tensor table and data; figures and `timings.csv` (wall times)
/// are left out.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            let name = p.file_name().unwrap().to_str().unwrap();
            if name.starts_with('.') || name == "timings.csv" || ext == "png" || ext == "svg" {
                continue;
            }
            let content = match ext {
                "json" => {
                    let mut v: serde_json::Value =
                        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                    if let Some(m) = v.as_object_mut() {
                        m.remove("provenance");
                    }
                    strip_times(&mut v);
                    v.to_string().into_bytes()
                }
                "csv" => {
                    let text = std::fs::read_to_string(&p).unwrap();
                    let mut lines = text.lines();
                    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
                    let keep: Vec<bool> = header.iter().map(|h| !h.ends_with("seconds")).collect();
                    let mut s = String::new();
                    for l in std::iter::once(header.join(",").as_str()).chain(lines) {
                        let cells: Vec<&str> = l
                            .split(',')
                            .enumerate()
                            .filter(|(i, _)| keep.get(*i).copied().unwrap_or(true))
                            .map(|(_, c)| c)
                            .collect();
                        s.push_str(&cells.join(","));
                        s.push('\n');
                    }
                    s.into_bytes()
                }
                "safetensors" => {
                    let (h, data) = tensors(&p);
                    let mut b = h.to_string().into_bytes();
                    b.extend_from_slice(&data);
                    b
                }
                _ => std::fs::read(&p).unwrap(),
            };
            out.push((rel, content));
        }
    }
    out.sort();
    out
}

/// The splits added to the grids: `hessian --top/--bottom/--trace/--fisher-trace/--dense`
/// on an MLP (analytic HVPs over 3 sample blocks, the dense matrix by layer-pair blocks),
/// `hessian --top --fisher-trace` on a BatchNorm ConvNet (HVPs through the tape over 2
/// batches), `sample-size`, `margins-study` and `sphere sweep`: every output file the
/// same at `-np 1, 2, 3` as without MPI. (The ConvNet's `--dense` by columns is left
/// out: 1,700 HVPs are too slow for CI.)
#[test]
fn mpi_reductions_and_sweeps_do_not_depend_on_the_rank_count() {
    let Some((bin, run)) = mpi_setup() else {
        return;
    };
    let d = TempDir::new("mpi-more");
    ok(&plain(
        &d,
        &[
            "train",
            "--data",
            "digits",
            "--hidden",
            "6",
            "--epochs",
            "2",
            "--seed",
            "1",
            "--out",
            "a.safetensors",
        ],
    ));
    ok(&plain(
        &d,
        &[
            "train",
            "--arch",
            "convnet",
            "--width",
            "2",
            "--data",
            "digits",
            "--epochs",
            "1",
            "--seed",
            "0",
            "--out",
            "c.safetensors",
        ],
    ));
    let mut study = landscape::experiments::margins::study::StudyConfig {
        test_size: Some(40),
        epochs: 1,
        checkpoints: vec![1],
        layers: vec!["output".into()],
        folds: 2,
        ..Default::default()
    };
    study.grid.depth = vec![1];
    study.grid.width = vec![4];
    study.grid.lr = vec![0.05];
    study.grid.batch_size = vec![16];
    study.grid.train_size = vec![32];
    study.grid.label_noise = vec![0.0, 0.2];
    study.grid.seed = vec![0, 1];
    study.curvature.samples = 16;
    study.curvature.lanczos_iter = 3;
    study.curvature.hutchinson_probes = 2;
    study.curvature.sharpness_steps = 1;
    std::fs::write(d.join("study.json"), serde_json::to_string(&study).unwrap()).unwrap();
    // The MLP: 1,100 samples are 3 HVP blocks at one thread.
    let mlp: &[&str] = &[
        "hessian",
        "--model",
        "../../a.safetensors",
        "--data",
        "digits",
        "--samples",
        "1100",
        "--top",
        "2",
        "--bottom",
        "1",
        "--trace",
        "--probes",
        "4",
        "--fisher-trace",
        "--dense",
        "h.safetensors",
        "--threads",
        "1",
        "--json",
        "h.json",
    ];
    // The ConvNet in train-mode BatchNorm: 2 batches of 20, 2 HVP chunks.
    let conv: &[&str] = &[
        "hessian",
        "--model",
        "../../c.safetensors",
        "--data",
        "digits",
        "--samples",
        "40",
        "--top",
        "1",
        "--fisher-trace",
        "--bn-mode",
        "train",
        "--bn-batch-size",
        "20",
        "--threads",
        "1",
        "--json",
        "c.json",
    ];
    let sample_size: &[&str] = &[
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
        "--json",
        "ss.json",
    ];
    let margins: &[&str] = &[
        "margins-study",
        "--config",
        "../../study.json",
        "--out",
        "study",
        "--threads",
        "1",
    ];
    let sphere: &[&str] = &[
        "sphere",
        "sweep",
        "--data",
        "digits",
        "--train-size",
        "64",
        "--test-split",
        "0.25",
        "--width",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--elr",
        "1e-3,1e-2,1",
        "--curvature-every",
        "1",
        "--curvature-samples",
        "16",
        "--curvature-batch",
        "16",
        "--lanczos-iter",
        "3",
        "--no-figs",
        "--threads",
        "1",
        "--out",
        "sphere",
    ];
    let commands = [mlp, conv, sample_size, margins, sphere];
    let reference = d.join("ref");
    for (k, args) in commands.iter().enumerate() {
        let dir = reference.join(k.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        ok(&plain(&dir, args));
    }
    for np in 1..=3 {
        for (k, args) in commands.iter().enumerate() {
            let dir = d.join(format!("np{np}")).join(k.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            ok(&mpirun(&run, np, &bin, &dir, args));
            let (a, b) = (tree(&reference.join(k.to_string())), tree(&dir));
            assert_eq!(
                a.iter().map(|f| &f.0).collect::<Vec<_>>(),
                b.iter().map(|f| &f.0).collect::<Vec<_>>(),
                "{}: files at -np {np}",
                args[0]
            );
            for (x, y) in a.iter().zip(&b) {
                assert!(x.1 == y.1, "{}: {} differs at -np {np}", args[0], x.0);
            }
        }
        let (_, ranks) = results_json(&d.join(format!("np{np}/0/h.json")));
        assert_eq!(ranks, np as u64, "ranks recorded");
    }
}
