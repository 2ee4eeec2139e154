//! The network engine end to end: model files (landscape and PyTorch state-dict
//! names), training on image files, every command on a ConvNet, one-line errors.

use crate::common::TempDir;
use landscape::io::model_file::{write_safetensors, RawTensor};
use landscape::io::network_file::{load_network, save_network, NetworkImport};
use landscape::nn::arch::{preset, PresetOptions};
use landscape::nn::{Init, LossKind, Network};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_landscape"))
        .args(args)
        .output()
        .expect("run landscape")
}

fn ok(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "command failed: {e}");
    e
}

fn clean_failure(o: &Output, needle: &str) {
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "expected failure: {e}");
    assert!(!e.contains("panicked"), "panic: {e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{e}");
    assert!(lines[0].contains(needle), "expected '{needle}' in: {e}");
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn convnet(width: usize, shape: [usize; 3]) -> Network<f64> {
    let o = PresetOptions {
        input_shape: shape,
        classes: 10,
        loss: LossKind::CrossEntropy,
        width,
        wide: 1,
        mlp: None,
    };
    let mut net =
        Network::<f64>::init(preset("convnet", &o).unwrap(), Init::Torch, 1.0, 3).unwrap();
    net.fill_deterministic();
    for (i, b) in net.bn.iter_mut().enumerate() {
        b.num_batches_tracked = 7 + i as u64;
    }
    net
}

#[test]
fn network_files_round_trip_and_read_pytorch_state_dicts() {
    let d = TempDir::new("netfiles");
    let net = convnet(2, [1, 8, 8]);
    let p = d.join("c.safetensors");
    save_network(&net, &p, &BTreeMap::new()).unwrap();
    let (back, meta) = load_network::<f64>(&p, &NetworkImport::default()).unwrap();
    assert_eq!(back, net, "bit-identical round trip, buffers included");
    assert_eq!(meta["format"], "landscape-network");
    // Byte-identical rewrites.
    let p2 = d.join("c2.safetensors");
    save_network(&back, &p2, &BTreeMap::new()).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&p2).unwrap());

    // The same tensors without metadata, as `safetensors.torch.save_file(state_dict)`
    // writes them: an architecture must be given, then everything loads.
    let lay = net.arch.layout().unwrap();
    let mut raw = Vec::new();
    for t in &lay.tensors {
        use landscape::nn::arch::TensorKind;
        let r = match t.kind {
            TensorKind::Param(i) => RawTensor::f32(
                t.name.clone(),
                t.shape.clone(),
                &net.params[i]
                    .as_slice()
                    .iter()
                    .map(|&v| v as f32)
                    .collect::<Vec<_>>(),
            ),
            TensorKind::RunningMean(b) => RawTensor::f64(
                t.name.clone(),
                t.shape.clone(),
                net.bn[b].running_mean.as_slice(),
            ),
            TensorKind::RunningVar(b) => RawTensor::f64(
                t.name.clone(),
                t.shape.clone(),
                net.bn[b].running_var.as_slice(),
            ),
            TensorKind::NumBatchesTracked(b) => RawTensor {
                name: t.name.clone(),
                dtype: safetensors::Dtype::I64,
                shape: vec![],
                data: (net.bn[b].num_batches_tracked as i64)
                    .to_le_bytes()
                    .to_vec(),
            },
        };
        raw.push(r);
    }
    let tp = d.join("torch.safetensors");
    write_safetensors(&tp, &raw, &BTreeMap::new()).unwrap();
    let opts = NetworkImport {
        arch: Some(net.arch.clone()),
        ..Default::default()
    };
    let (imp, _) = load_network::<f64>(&tp, &opts).unwrap();
    assert_eq!(imp.bn, net.bn);
    for (a, b) in imp.params.iter().zip(&net.params) {
        for (x, y) in a.as_slice().iter().zip(b.as_slice()) {
            assert_eq!(*x, *y as f32 as f64);
        }
    }
    // Wrong shape, missing and unexpected tensors: one-line errors naming the tensor.
    let mut bad = raw.clone();
    bad[0].shape = vec![2, 1, 9];
    write_safetensors(&tp, &bad, &BTreeMap::new()).unwrap();
    let e = load_network::<f64>(&tp, &opts).unwrap_err().to_string();
    assert!(
        e.contains("conv_layers.0.weight") && e.contains("shape") && !e.contains('\n'),
        "{e}"
    );
    let missing: Vec<RawTensor> = raw
        .iter()
        .filter(|t| t.name != "linear_layers.2.bias")
        .cloned()
        .collect();
    write_safetensors(&tp, &missing, &BTreeMap::new()).unwrap();
    let e = load_network::<f64>(&tp, &opts).unwrap_err().to_string();
    assert!(e.contains("missing tensor 'linear_layers.2.bias'"), "{e}");
    let mut extra = raw.clone();
    extra.push(RawTensor::f64("fc.weight", vec![1], &[1.0]));
    write_safetensors(&tp, &extra, &BTreeMap::new()).unwrap();
    let e = load_network::<f64>(&tp, &opts).unwrap_err().to_string();
    assert!(e.contains("unexpected tensor 'fc.weight'"), "{e}");
    let mut neg = raw.clone();
    let rv = neg
        .iter_mut()
        .find(|t| t.name == "conv_layers.1.running_var")
        .unwrap();
    *rv = RawTensor::f64(rv.name.clone(), vec![2], &[1.0, -0.5]);
    write_safetensors(&tp, &neg, &BTreeMap::new()).unwrap();
    let e = load_network::<f64>(&tp, &opts).unwrap_err().to_string();
    assert!(e.contains("negative"), "{e}");
}

/// A CIFAR-10 binary batch of `n` records (label byte + 3072 pixel bytes).
fn cifar_file(path: &Path, n: usize) {
    let mut bytes = Vec::with_capacity(n * 3073);
    let mut s: u32 = 12345;
    for i in 0..n {
        let label = (i % 10) as u8;
        bytes.push(label);
        for j in 0..3072 {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
            // Class-dependent brightness per channel so the net has something to learn.
            let c = j / 1024;
            let v = ((s >> 16) % 64) as usize + if c == (label as usize % 3) { 150 } else { 40 };
            bytes.push(v.min(255) as u8);
        }
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn resnet20_trains_on_a_cifar_file_end_to_end() {
    let d = TempDir::new("cifar-resnet");
    let data = d.join("data_batch_1.bin");
    cifar_file(&data, 24);
    let model = d.join("r.safetensors");
    let rj = d.join("r.json");
    let data_s = data.to_str().unwrap();
    ok(&run(&[
        "train",
        "--arch",
        "resnet20",
        "--data",
        data_s,
        "--test-split",
        "0.25",
        "--epochs",
        "1",
        "--batch-size",
        "6",
        "--dtype",
        "f32",
        "--seed",
        "1",
        "--out",
        model.to_str().unwrap(),
        "--json",
        rj.to_str().unwrap(),
    ]));
    let r = json(&rj);
    assert_eq!(r["results"]["architecture"], "resnet20");
    assert_eq!(r["results"]["num_params"], 272_474);
    assert!(r["results"]["final"]["train_loss"]
        .as_f64()
        .unwrap()
        .is_finite());
    // The file carries the architecture: eval, info and export need nothing else.
    let ej = d.join("e.json");
    ok(&run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data_s,
        "--test-split",
        "0.25",
        "--json",
        ej.to_str().unwrap(),
    ]));
    let e = json(&ej);
    assert!(e["results"]["test"]["loss"].as_f64().unwrap().is_finite());
    let out = run(&["info", "--model", model.to_str().unwrap()]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("architecture resnet20"));
    let ex = d.join("export");
    ok(&run(&[
        "export",
        "--model",
        model.to_str().unwrap(),
        "--out",
        ex.to_str().unwrap(),
    ]));
    let manifest = json(&ex.join("manifest.json"));
    assert_eq!(manifest["num_params"], 272_474);
    assert!(ex.join("layer2.0.shortcut.0.weight.npy").exists());
}

#[test]
fn every_curvature_command_runs_on_a_bn_convnet() {
    let d = TempDir::new("convnet-cmds");
    let model = d.join("c.safetensors");
    ok(&run(&[
        "train",
        "--arch",
        "convnet",
        "--width",
        "2",
        "--data",
        "digits",
        "--test-split",
        "0.2",
        "--epochs",
        "1",
        "--seed",
        "0",
        "--out",
        model.to_str().unwrap(),
    ]));
    let m = model.to_str().unwrap();
    for mode in ["eval", "train"] {
        let hj = d.join(format!("h-{mode}.json"));
        ok(&run(&[
            "hessian",
            "--model",
            m,
            "--data",
            "digits",
            "--samples",
            "60",
            "--top",
            "2",
            "--bottom",
            "1",
            "--trace",
            "--probes",
            "4",
            "--per-layer",
            "--fisher-trace",
            "--grad-norms",
            "20",
            "--bn-mode",
            mode,
            "--bn-batch-size",
            "20",
            "--json",
            hj.to_str().unwrap(),
        ]));
        let h = json(&hj);
        let r = &h["results"];
        assert_eq!(r["bn_mode"]["mode"], mode);
        assert_eq!(r["eigenvalues"]["ritz_values"].as_array().unwrap().len(), 3);
        for res in r["eigenvalues"]["residuals"].as_array().unwrap() {
            assert!(res.as_f64().unwrap() < 1e-6);
        }
        assert_eq!(r["per_layer"].as_array().unwrap().len(), 6);
        assert!(r["fisher_trace"]["value"].as_f64().unwrap() > 0.0);
        assert_eq!(r["grad_norms"]["batches"], 3);
        assert!(r["trace"]["hutchinson"]["ci95"].is_array());
    }
    // --krylov mixed: the same eigenvalues as the f64 run, within the f64 residuals
    // both runs certify; f32 products counted.
    let mj = d.join("h-mixed.json");
    ok(&run(&[
        "hessian",
        "--model",
        m,
        "--data",
        "digits",
        "--samples",
        "60",
        "--top",
        "2",
        "--bottom",
        "1",
        "--krylov",
        "mixed",
        "--json",
        mj.to_str().unwrap(),
    ]));
    let (mixed, plain) = (json(&mj), json(&d.join("h-eval.json")));
    let (me, pe) = (
        &mixed["results"]["eigenvalues"],
        &plain["results"]["eigenvalues"],
    );
    assert!(me["f32_products"].as_u64().unwrap() > 0);
    assert_eq!(me["converged"], true);
    for i in 0..3 {
        let (a, b) = (
            me["ritz_values"][i].as_f64().unwrap(),
            pe["ritz_values"][i].as_f64().unwrap(),
        );
        let (ra, rb) = (
            me["residuals"][i].as_f64().unwrap(),
            pe["residuals"][i].as_f64().unwrap(),
        );
        assert!(ra < 1e-6, "mixed residual {ra}");
        assert!((a - b).abs() <= ra + rb + 1e-12, "mixed {a} vs f64 {b}");
    }
    clean_failure(
        &run(&[
            "hessian",
            "--model",
            m,
            "--data",
            "digits",
            "--samples",
            "10",
            "--trace",
            "--krylov",
            "mixed",
        ]),
        "applies to --top/--bottom",
    );
    // MLP-only mathematics refuses other networks in one line.
    clean_failure(
        &run(&[
            "hessian",
            "--model",
            m,
            "--data",
            "digits",
            "--samples",
            "10",
            "--gn-norms",
            "x.csv",
        ]),
        "MLPs without BatchNorm",
    );
    clean_failure(
        &run(&["bounds", "--model", m, "--data", "digits"]),
        "MLPs only",
    );
    clean_failure(
        &run(&[
            "hessian",
            "--model",
            m,
            "--data",
            "digits",
            "--samples",
            "21",
            "--top",
            "1",
            "--bn-mode",
            "train",
            "--bn-batch-size",
            "20",
        ]),
        "last BatchNorm batch of 1 sample",
    );
    // A model on data of another shape.
    clean_failure(
        &run(&["eval", "--model", m, "--data", "mnist10k"]),
        "input features",
    );
    // Unknown presets and impossible options.
    clean_failure(
        &run(&[
            "train", "--arch", "resnet21", "--data", "digits", "--epochs", "1",
        ]),
        "not a preset",
    );
    clean_failure(
        &run(&[
            "train", "--arch", "convnet", "--hidden", "32", "--data", "digits", "--epochs", "1",
        ]),
        "describe MLPs",
    );
    clean_failure(
        &run(&[
            "train", "--arch", "convnet", "--width", "0", "--data", "digits", "--epochs", "1",
        ]),
        "positive",
    );
}

#[test]
fn convnet_training_is_reproducible() {
    let d = TempDir::new("convnet-repro");
    let mut files = Vec::new();
    for tag in ["a", "b"] {
        let p = d.join(format!("{tag}.safetensors"));
        ok(&run(&[
            "train",
            "--arch",
            "convnet",
            "--width",
            "3",
            "--data",
            "digits",
            "--train-size",
            "300",
            "--test-split",
            "0.2",
            "--epochs",
            "2",
            "--seed",
            "5",
            "--out",
            p.to_str().unwrap(),
        ]));
        files.push(std::fs::read(&p).unwrap());
    }
    assert_eq!(files[0], files[1], "byte-identical model files");
}

#[test]
fn geometry_commands_run_on_bn_convnets() {
    let d = TempDir::new("convnet-geometry");
    let (a, b) = (d.join("a.safetensors"), d.join("b.safetensors"));
    for (p, seed) in [(&a, "0"), (&b, "1")] {
        ok(&run(&[
            "train",
            "--arch",
            "convnet",
            "--width",
            "2",
            "--data",
            "digits",
            "--train-size",
            "200",
            "--test-split",
            "0.2",
            "--epochs",
            "1",
            "--seed",
            seed,
            "--out",
            p.to_str().unwrap(),
        ]));
    }
    let (ma, mb) = (a.to_str().unwrap(), b.to_str().unwrap());
    for mode in ["eval", "train"] {
        let lj = d.join(format!("line-{mode}.json"));
        ok(&run(&[
            "line",
            "--model",
            ma,
            "--to",
            mb,
            "--data",
            "digits",
            "--samples",
            "64",
            "--range",
            "0:1:3",
            "--bn-mode",
            mode,
            "--bn-batch-size",
            "32",
            "--json",
            lj.to_str().unwrap(),
        ]));
        let l = json(&lj);
        let loss = l["results"]["train_loss"].as_array().unwrap();
        assert_eq!(loss.len(), 3);
        if mode == "eval" {
            // t = 0 is model A itself: compare with `eval` on the same samples.
            let ej = d.join("e.json");
            ok(&run(&[
                "eval",
                "--model",
                ma,
                "--data",
                "digits",
                "--train-size",
                "64",
                "--split",
                "train",
                "--json",
                ej.to_str().unwrap(),
            ]));
            let direct = json(&ej)["results"]["train"]["loss"].as_f64().unwrap();
            assert!(
                (loss[0].as_f64().unwrap() - direct).abs() <= 1e-12 * direct,
                "{} vs {direct}",
                loss[0]
            );
        }
        let sj = d.join(format!("surface-{mode}.json"));
        ok(&run(&[
            "surface",
            "--model",
            ma,
            "--data",
            "digits",
            "--samples",
            "64",
            "--grid",
            "-1:1:3x-1:1:3",
            "--curvature-grid",
            "0:1:2x0:1:2",
            "--bn-mode",
            mode,
            "--bn-batch-size",
            "32",
            "--json",
            sj.to_str().unwrap(),
            "--out",
            d.join(format!("s-{mode}.safetensors")).to_str().unwrap(),
        ]));
        let s = json(&sj);
        assert_eq!(s["results"]["points"], 9);
        assert!(s["results"]["curvature"][0]["curvature"]["lambda_max"]
            .as_f64()
            .unwrap()
            .is_finite());
        assert_eq!(s["provenance"]["config"]["bn_mode"]["mode"], mode);
    }
    let cj = d.join("connect.json");
    ok(&run(&[
        "connect",
        "--a",
        ma,
        "--b",
        mb,
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
        d.join("bend.safetensors").to_str().unwrap(),
        "--json",
        cj.to_str().unwrap(),
    ]));
    let c = json(&cj);
    assert!(c["results"]["summary"]["linear_train"]["max_loss"]
        .as_f64()
        .unwrap()
        .is_finite());
    // A model of another architecture is refused in one line.
    let other = d.join("mlp.safetensors");
    ok(&run(&[
        "train",
        "--data",
        "digits",
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--out",
        other.to_str().unwrap(),
    ]));
    clean_failure(
        &run(&[
            "connect",
            "--a",
            ma,
            "--b",
            other.to_str().unwrap(),
            "--data",
            "digits",
        ]),
        "different architectures",
    );
}
