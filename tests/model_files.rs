//! Integration tests: model files.
//!
//! * The committed fixture models (`tests/fixtures/*.safetensors`, written by the ignored
//!   test `make_fixture_models`) are evaluated on the UCI digits and compared with an
//!   independent NumPy forward pass (`tests/fixtures/numpy_forward.py`, results in
//!   `tests/fixtures/numpy_reference.json`). One fixture is a PyTorch-style
//!   `nn.Sequential` state dict written by Python, not by this crate.
//! * Round trips (f32, f64), byte-identical saves, PyTorch name import, NumPy export,
//!   and malformed files with the exact error they must produce.
//!
//! The digits are parsed here (not through the `data` module) so that this test checks
//! the model code against NumPy alone.

use landscape::io::model_file::{
    load_mlp, load_mlp_f64, load_mlp_with_metadata, read_metadata, save_mlp, write_safetensors,
    ImportOptions, RawTensor,
};
use landscape::io::npy::{self, ExportFormat};
use landscape::io::Provenance;
use landscape::nn::{Activation, BatchNormConfig, Init, LossKind, Mlp, MlpConfig};
use landscape::{Error, Matrix};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A fresh, empty scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("model_files")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The 1,797 UCI digits, pixels normalised to [-1, 1] as `x / 16 * 2 - 1`.
fn digits() -> (Matrix<f64>, Vec<usize>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/uci-digits/digits.csv.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let mut x = Vec::new();
    let mut y = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Vec<f64> = line.split(',').map(|s| s.trim().parse().unwrap()).collect();
        assert_eq!(v.len(), 65, "64 pixels and a label");
        x.extend(v[..64].iter().map(|p| p / 16.0 * 2.0 - 1.0));
        y.push(v[64] as usize);
    }
    assert_eq!(y.len(), 1797);
    (Matrix::from_vec(y.len(), 64, x), y)
}

fn config(hidden: &[usize], act: Activation, bias: bool, loss: LossKind) -> MlpConfig {
    MlpConfig {
        input_dim: 64,
        hidden: hidden.to_vec(),
        classes: 10,
        activation: act,
        leaky_slope: 0.01,
        bias,
        batchnorm: None,
        loss,
    }
}

/// Deterministic, non-trivial BatchNorm parameters and running statistics.
fn perturb_batchnorm(m: &mut Mlp<f64>) {
    for layer in &mut m.layers {
        if let Some(bn) = &mut layer.bn {
            let n = bn.running_mean.len();
            for j in 0..n {
                let t = j as f64;
                bn.running_mean.as_mut_slice()[j] = 0.3 * (1.7 * t + 0.5).sin();
                bn.running_var.as_mut_slice()[j] = 0.5 + 0.1 * ((j * 7) % 11) as f64;
                if let Some(g) = &mut bn.gamma {
                    g.as_mut_slice()[j] = 1.0 + 0.2 * t.cos();
                }
                if let Some(b) = &mut bn.beta {
                    b.as_mut_slice()[j] = 0.1 * (0.9 * t).sin();
                }
            }
        }
    }
}

/// The three landscape-format fixture models.
fn fixture_models() -> Vec<(&'static str, Mlp<f64>)> {
    let a = Mlp::<f64>::init(
        config(&[32, 16], Activation::Relu, true, LossKind::CrossEntropy),
        Init::Torch,
        1.0,
        1,
    )
    .unwrap();
    let mut cb = config(&[24], Activation::Tanh, false, LossKind::CrossEntropy);
    cb.batchnorm = Some(BatchNormConfig {
        affine: true,
        eps: 1e-3,
        momentum: 0.1,
    });
    let mut b = Mlp::<f64>::init(cb, Init::Torch, 1.0, 2).unwrap();
    perturb_batchnorm(&mut b);
    let mut cc = config(&[16], Activation::LeakyRelu, true, LossKind::Mse);
    cc.leaky_slope = 0.1;
    let c = Mlp::<f64>::init(cc, Init::Torch, 1.0, 3).unwrap();
    vec![
        ("mlp_relu_ce", a),
        ("mlp_tanh_bn_nobias", b),
        ("mlp_leaky_mse", c),
    ]
}

/// Writes the fixture models. Run once with
/// `cargo test --release --test integration make_fixture_models -- --ignored`,
/// then `python3 tests/fixtures/numpy_forward.py`.
#[test]
#[ignore]
fn make_fixture_models() {
    for (name, m) in fixture_models() {
        let path = fixtures_dir().join(format!("{name}.safetensors"));
        save_mlp(&m, &path, &BTreeMap::new()).unwrap();
        eprintln!("wrote {}", path.display());
    }
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures_dir().join("numpy_reference.json"))
        .expect("tests/fixtures/numpy_reference.json (run tests/fixtures/numpy_forward.py)");
    serde_json::from_str(&text).unwrap()
}

fn rel_diff(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

#[test]
fn forward_pass_matches_numpy() {
    let (x, y) = digits();
    let refs = reference();
    let models = refs["models"].as_object().unwrap();
    assert_eq!(
        models.len(),
        4,
        "three landscape fixtures and one PyTorch-style file"
    );
    for (name, r) in models {
        let path = fixtures_dir().join(r["file"].as_str().unwrap());
        let mut opts = ImportOptions::default();
        if let Some(o) = r.get("import_options") {
            opts.activation = o["activation"]
                .as_str()
                .map(|s| Activation::from_name(s).unwrap());
            opts.loss = o["loss"].as_str().map(|s| LossKind::from_name(s).unwrap());
            opts.batchnorm_eps = o["batchnorm_eps"].as_f64();
        }
        let model = load_mlp_f64(&path, &opts).unwrap();
        let logits = model.logits(&x).unwrap();
        let loss = model.config.loss.mean(&logits, &y);
        let err = landscape::nn::loss::error_rate(&logits, &y);
        eprintln!(
            "{name}: loss {loss} (numpy {}, rel. diff {:.1e})",
            r["mean_loss"],
            rel_diff(loss, r["mean_loss"].as_f64().unwrap())
        );
        let (ref_loss, ref_err) = (
            r["mean_loss"].as_f64().unwrap(),
            r["error_rate"].as_f64().unwrap(),
        );
        assert!(
            rel_diff(loss, ref_loss) <= 1e-6,
            "{name}: loss {loss} vs numpy {ref_loss}"
        );
        assert!(
            (err - ref_err).abs() < 1e-12,
            "{name}: error {err} vs numpy {ref_err}"
        );
        assert_eq!(r["n"].as_u64().unwrap() as usize, y.len());
        // The same file read into f32 agrees to f32 accuracy.
        let m32 = load_mlp::<f32>(&path, &opts).unwrap();
        let l32 = m32
            .config
            .loss
            .mean(&m32.logits(&x.cast::<f32>()).unwrap(), &y);
        assert!(
            rel_diff(l32, ref_loss) <= 1e-4,
            "{name}: f32 loss {l32} vs {ref_loss}"
        );
    }
}

#[test]
fn fixtures_rewrite_byte_identically() {
    for (name, _) in fixture_models() {
        let path = fixtures_dir().join(format!("{name}.safetensors"));
        let (model, meta) =
            load_mlp_with_metadata::<f64>(&path, &ImportOptions::default()).unwrap();
        assert_eq!(meta["format"], "landscape-mlp");
        let out = scratch("rewrite").join(format!("{name}.safetensors"));
        save_mlp(&model, &out, &BTreeMap::new()).unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&path).unwrap(),
            "{name}: re-saving a loaded model changes the file"
        );
    }
}

fn assorted_models() -> Vec<Mlp<f64>> {
    let mut out = Vec::new();
    for (i, (hidden, act, bias, loss, bn)) in [
        (vec![], Activation::Relu, true, LossKind::CrossEntropy, None),
        (
            vec![7, 3],
            Activation::Relu,
            false,
            LossKind::CrossEntropy,
            None,
        ),
        (vec![5], Activation::Tanh, true, LossKind::Mse, Some(true)),
        (
            vec![4, 6],
            Activation::Identity,
            false,
            LossKind::CrossEntropy,
            Some(false),
        ),
        (
            vec![2],
            Activation::LeakyRelu,
            true,
            LossKind::Mse,
            Some(true),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = config(&hidden, act, bias, loss);
        c.input_dim = 3 + i;
        c.classes = 2 + i;
        c.leaky_slope = 0.2;
        c.batchnorm = bn.map(|affine| BatchNormConfig {
            affine,
            eps: 1e-4,
            momentum: 0.05,
        });
        let mut m = Mlp::<f64>::init(c, Init::Kaiming, 0.5, 10 + i as u64).unwrap();
        perturb_batchnorm(&mut m);
        out.push(m);
    }
    out
}

#[test]
fn round_trip_f64_and_f32() {
    let dir = scratch("round_trip");
    for (i, m) in assorted_models().into_iter().enumerate() {
        let p64 = dir.join(format!("m{i}_f64.safetensors"));
        save_mlp(&m, &p64, &BTreeMap::new()).unwrap();
        let back = load_mlp_f64(&p64, &ImportOptions::default()).unwrap();
        assert_eq!(back, m, "f64 round trip of model {i}");
        assert_eq!(back.param_vector(), m.param_vector());

        let m32: Mlp<f32> = m.cast();
        let p32 = dir.join(format!("m{i}_f32.safetensors"));
        save_mlp(&m32, &p32, &BTreeMap::new()).unwrap();
        assert_eq!(
            load_mlp::<f32>(&p32, &ImportOptions::default()).unwrap(),
            m32
        );
        // An F32 file read as f64 converts exactly.
        assert_eq!(
            load_mlp_f64(&p32, &ImportOptions::default()).unwrap(),
            m32.cast::<f64>()
        );
        // The dtype on disk follows the model.
        let bytes = std::fs::read(&p32).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert!(st
            .tensors()
            .iter()
            .all(|(_, t)| t.dtype() == safetensors::Dtype::F32));
    }
}

#[test]
fn saves_are_byte_identical_and_carry_metadata() {
    let dir = scratch("byte_identical");
    let m = &assorted_models()[2];
    let prov = Provenance::new("landscape test", Some(5), None, serde_json::json!({"k": 1}));
    let mut extra = prov.model_metadata();
    extra.insert("note".into(), "hello \"world\"\nline two".into());
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    save_mlp(m, &a, &extra).unwrap();
    save_mlp(m, &b, &extra).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let meta = read_metadata(&a).unwrap();
    assert_eq!(meta["format"], "landscape-mlp");
    assert_eq!(meta["format_version"], "1");
    assert_eq!(meta["note"], "hello \"world\"\nline two");
    let cfg: MlpConfig = serde_json::from_str(&meta["config"]).unwrap();
    assert_eq!(cfg, m.config);
    let p: Provenance = serde_json::from_str(&meta["provenance"]).unwrap();
    assert_eq!(p, prov);
    let (_, meta2) = load_mlp_with_metadata::<f64>(&a, &ImportOptions::default()).unwrap();
    assert_eq!(meta, meta2);
    // Reserved keys cannot be overridden.
    let mut bad = BTreeMap::new();
    bad.insert("config".to_string(), "{}".to_string());
    let e = save_mlp(m, &dir.join("c.safetensors"), &bad).unwrap_err();
    assert!(e.to_string().contains("'config' is reserved"), "{e}");
}

#[test]
fn refuses_to_save_non_finite_parameters() {
    let dir = scratch("save_nan");
    let mut m = assorted_models()[1].clone();
    m.layers[1].weight.as_mut_slice()[4] = f64::NAN;
    let e = save_mlp(&m, &dir.join("x.safetensors"), &BTreeMap::new()).unwrap_err();
    assert!(
        e.to_string()
            .contains("tensor 'layers.1.weight' has a non-finite value (NaN) at index 4"),
        "{e}"
    );
    assert!(!dir.join("x.safetensors").exists());
}

/// Tensors of a PyTorch `nn.Sequential(Linear, BatchNorm1d, act, Linear)` equivalent to
/// `m` (one hidden layer with BatchNorm), under `prefix`.
fn sequential_tensors(m: &Mlp<f64>, prefix: &str, f32: bool) -> Vec<RawTensor> {
    let t = |name: String, shape: Vec<usize>, v: &[f64]| {
        if f32 {
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            RawTensor::f32(name, shape, &v)
        } else {
            RawTensor::f64(name, shape, v)
        }
    };
    let mut out = Vec::new();
    let mut idx = 0;
    for (p, l) in m.layers.iter().enumerate() {
        let w = &l.weight;
        out.push(t(
            format!("{prefix}{idx}.weight"),
            vec![w.rows(), w.cols()],
            w.as_slice(),
        ));
        if let Some(b) = &l.bias {
            out.push(t(
                format!("{prefix}{idx}.bias"),
                vec![b.len()],
                b.as_slice(),
            ));
        }
        idx += 1;
        if let Some(bn) = &l.bn {
            let n = bn.running_mean.len();
            if let (Some(g), Some(b)) = (&bn.gamma, &bn.beta) {
                out.push(t(format!("{prefix}{idx}.weight"), vec![n], g.as_slice()));
                out.push(t(format!("{prefix}{idx}.bias"), vec![n], b.as_slice()));
            }
            out.push(t(
                format!("{prefix}{idx}.running_mean"),
                vec![n],
                bn.running_mean.as_slice(),
            ));
            out.push(t(
                format!("{prefix}{idx}.running_var"),
                vec![n],
                bn.running_var.as_slice(),
            ));
            out.push(RawTensor {
                name: format!("{prefix}{idx}.num_batches_tracked"),
                dtype: safetensors::Dtype::I64,
                shape: vec![],
                data: 123i64.to_le_bytes().to_vec(),
            });
            idx += 1;
        }
        if p + 1 < m.layers.len() {
            idx += 1; // the activation module has no tensors
        }
    }
    out
}

#[test]
fn imports_pytorch_sequential_state_dicts() {
    let dir = scratch("sequential");
    let models = assorted_models();
    // models[2]: 5 -> 5 (BN affine) -> 4, tanh, bias, MSE, eps 1e-4.
    // models[3]: 6 -> 4 -> 6 (BN without affine) -> 5, identity, no bias.
    for (k, m) in [&models[0], &models[1], &models[2], &models[3], &models[4]]
        .into_iter()
        .enumerate()
    {
        for prefix in ["", "net.", "model.net."] {
            let path = dir.join(format!("seq{k}.safetensors"));
            write_safetensors(
                &path,
                &sequential_tensors(m, prefix, false),
                &BTreeMap::new(),
            )
            .unwrap();
            let opts = ImportOptions {
                activation: Some(m.config.activation),
                loss: Some(m.config.loss),
                batchnorm_eps: m.config.batchnorm.map(|b| b.eps),
                leaky_slope: Some(m.config.leaky_slope),
            };
            let got = load_mlp_f64(&path, &opts).unwrap();
            let mut want = m.clone();
            if let Some(bn) = &mut want.config.batchnorm {
                bn.momentum = 0.1; // not stored in a state dict: PyTorch's default
            }
            assert_eq!(got, want, "model {k} with prefix '{prefix}'");
        }
    }
    // Defaults: ReLU, cross-entropy, eps 1e-5; an F32 PyTorch file with a `1.weight`
    // BatchNorm between `0.weight` and `3.weight`.
    let m = &models[2];
    let path = dir.join("defaults.safetensors");
    write_safetensors(&path, &sequential_tensors(m, "", true), &BTreeMap::new()).unwrap();
    let names: Vec<String> = sequential_tensors(m, "", true)
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(
        names,
        [
            "0.weight",
            "0.bias",
            "1.weight",
            "1.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
            "3.weight",
            "3.bias"
        ]
    );
    let got = load_mlp_f64(&path, &ImportOptions::default()).unwrap();
    assert_eq!(got.config.activation, Activation::Relu);
    assert_eq!(got.config.loss, LossKind::CrossEntropy);
    assert_eq!(got.config.widths(), vec![5, 5, 4]);
    assert!(got.config.bias);
    let bn = got.config.batchnorm.unwrap();
    assert!(bn.affine);
    assert_eq!(bn.eps, 1e-5);
    assert_eq!(
        got.layers[0].weight.as_slice()[3],
        m.layers[0].weight.as_slice()[3] as f32 as f64
    );
    // A landscape-named file without metadata (e.g. from another tool) imports too.
    let plain: Vec<RawTensor> = m
        .named_params()
        .into_iter()
        .chain(m.named_buffers())
        .map(|(n, t)| {
            let shape = if n.ends_with(".weight") && !n.contains(".bn.") {
                vec![t.rows(), t.cols()]
            } else {
                vec![t.len()]
            };
            RawTensor::f64(n, shape, t.as_slice())
        })
        .collect();
    let path = dir.join("layers_no_meta.safetensors");
    write_safetensors(&path, &plain, &BTreeMap::new()).unwrap();
    let opts = ImportOptions {
        activation: Some(Activation::Tanh),
        loss: Some(LossKind::Mse),
        batchnorm_eps: Some(1e-4),
        leaky_slope: Some(0.2),
    };
    let mut want = m.clone();
    want.config.batchnorm.as_mut().unwrap().momentum = 0.1;
    assert_eq!(load_mlp_f64(&path, &opts).unwrap(), want);
}

/// Loads `tensors` written as a safetensors file and returns the error text.
fn load_error(dir: &Path, tensors: &[RawTensor], meta: &BTreeMap<String, String>) -> String {
    let path = dir.join("bad.safetensors");
    write_safetensors(&path, tensors, meta).unwrap();
    load_error_at(&path)
}

fn load_error_at(path: &Path) -> String {
    match load_mlp_f64(path, &ImportOptions::default()) {
        Ok(_) => panic!("{} loaded although it is malformed", path.display()),
        Err(e @ Error::Model { .. }) => {
            let s = e.to_string();
            assert!(
                s.starts_with(&format!("model file {}: ", path.display())),
                "{s}"
            );
            assert!(!s.contains('\n'), "multi-line error: {s}");
            s
        }
        Err(e) => panic!("expected Error::Model, got {e:?}"),
    }
}

fn f64t(name: &str, shape: &[usize]) -> RawTensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
    RawTensor::f64(name, shape.to_vec(), &v)
}

#[test]
fn rejects_malformed_files_with_clear_errors() {
    let dir = scratch("malformed");
    let none = BTreeMap::new();

    // Truncated files, at every kind of cut.
    let good = dir.join("good.safetensors");
    save_mlp(&assorted_models()[2], &good, &none).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.join("cut.safetensors");
    for len in [0, 5, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let e = load_error_at(&cut);
        assert!(
            e.contains("not a valid safetensors file"),
            "cut at {len}: {e}"
        );
    }
    std::fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
    assert!(load_error_at(&cut).contains("truncated file"));
    // Bad header JSON.
    let mut b = bytes.clone();
    b[8] = b'[';
    std::fs::write(&cut, &b).unwrap();
    assert!(load_error_at(&cut).contains("invalid JSON in header"));

    // Shapes that do not chain.
    let e = load_error(
        &dir,
        &[f64t("0.weight", &[8, 4]), f64t("2.weight", &[3, 7])],
        &none,
    );
    assert!(
        e.contains("shapes do not chain: tensor '2.weight' has 7 inputs but the previous linear layer '0.weight' has 8 outputs"),
        "{e}"
    );
    // Bias of the wrong length.
    let e = load_error(
        &dir,
        &[
            f64t("0.weight", &[8, 4]),
            f64t("0.bias", &[7]),
            f64t("2.weight", &[3, 8]),
            f64t("2.bias", &[3]),
        ],
        &none,
    );
    assert!(
        e.contains("tensor '0.bias' has shape [7], expected [8] (the bias of '0.weight')"),
        "{e}"
    );
    // Biases on some layers only.
    let e = load_error(
        &dir,
        &[
            f64t("0.weight", &[8, 4]),
            f64t("0.bias", &[8]),
            f64t("2.weight", &[3, 8]),
        ],
        &none,
    );
    assert!(
        e.contains("layer '0.weight' has a bias but '2.weight' does not"),
        "{e}"
    );
    // BatchNorm after the logits.
    let e = load_error(
        &dir,
        &[
            f64t("0.weight", &[3, 4]),
            f64t("1.running_mean", &[3]),
            f64t("1.running_var", &[3]),
        ],
        &none,
    );
    assert!(
        e.contains("BatchNorm module '1' follows the last linear layer '0.weight'"),
        "{e}"
    );
    // BatchNorm of the wrong width.
    let e = load_error(
        &dir,
        &[
            f64t("0.weight", &[5, 4]),
            f64t("1.running_mean", &[4]),
            f64t("1.running_var", &[4]),
            f64t("2.weight", &[3, 5]),
        ],
        &none,
    );
    assert!(
        e.contains("tensor '1.running_mean' has shape [4], expected [5]"),
        "{e}"
    );
    // A 1-D weight without running statistics (LayerNorm) and a conv weight.
    let e = load_error(
        &dir,
        &[
            f64t("0.weight", &[5, 4]),
            f64t("1.weight", &[5]),
            f64t("1.bias", &[5]),
            f64t("2.weight", &[3, 5]),
        ],
        &none,
    );
    assert!(
        e.contains("'1.weight' is a 1-D weight without running_mean/running_var"),
        "{e}"
    );
    let e = load_error(&dir, &[f64t("0.weight", &[5, 4, 3, 3])], &none);
    assert!(
        e.contains("tensor '0.weight' has shape [5, 4, 3, 3]"),
        "{e}"
    );
    // Names that are not an nn.Sequential.
    let e = load_error(&dir, &[f64t("fc1.weight", &[5, 4])], &none);
    assert!(e.contains("cannot read tensor 'fc1.weight'"), "{e}");
    let e = load_error(
        &dir,
        &[f64t("a.0.weight", &[5, 4]), f64t("b.1.weight", &[3, 5])],
        &none,
    );
    assert!(e.contains("has prefix 'b.' but others have 'a.'"), "{e}");
    // Wrong dtype and non-finite values.
    let e = load_error(
        &dir,
        &[RawTensor {
            name: "0.weight".into(),
            dtype: safetensors::Dtype::I32,
            shape: vec![2, 2],
            data: vec![0; 16],
        }],
        &none,
    );
    assert!(
        e.contains("tensor '0.weight' has dtype I32; expected F32 or F64"),
        "{e}"
    );
    let e = load_error(
        &dir,
        &[RawTensor::f32(
            "0.weight",
            vec![2, 2],
            &[1.0, f32::INFINITY, 0.0, 0.0],
        )],
        &none,
    );
    assert!(
        e.contains("tensor '0.weight' has a non-finite value (inf) at index 1"),
        "{e}"
    );
    let e = load_error(
        &dir,
        &[
            f64t("0.weight", &[2, 4]),
            f64t("1.running_mean", &[2]),
            RawTensor::f64("1.running_var", vec![2], &[1.0, -0.5]),
            f64t("2.weight", &[3, 2]),
        ],
        &none,
    );
    assert!(
        e.contains(
            "tensor '1.running_var' (a running variance) has a negative value (-0.5) at index 1"
        ),
        "{e}"
    );
    // No tensors at all.
    assert!(load_error(&dir, &[], &none).contains("the file holds no tensors"));
    // Cross-entropy needs two classes.
    let e = load_error(&dir, &[f64t("0.weight", &[1, 4])], &none);
    assert!(e.contains("the imported architecture is invalid"), "{e}");

    // Landscape files: missing, extra and misshapen tensors, bad config.
    let m = &assorted_models()[2];
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "landscape-mlp".to_string());
    meta.insert(
        "config".to_string(),
        serde_json::to_string(&m.config).unwrap(),
    );
    let full: Vec<RawTensor> = m
        .named_params()
        .into_iter()
        .chain(m.named_buffers())
        .map(|(n, t)| {
            let shape = if t.rows() > 1 {
                vec![t.rows(), t.cols()]
            } else {
                vec![t.len()]
            };
            RawTensor::f64(n, shape, t.as_slice())
        })
        .collect();
    let path = dir.join("full.safetensors");
    write_safetensors(&path, &full, &meta).unwrap();
    assert_eq!(&load_mlp_f64(&path, &ImportOptions::default()).unwrap(), m);
    let missing: Vec<RawTensor> = full
        .iter()
        .filter(|t| t.name != "layers.1.bias")
        .cloned()
        .collect();
    let e = load_error(&dir, &missing, &meta);
    assert!(
        e.contains("missing tensor 'layers.1.bias' (shape [4]) required by the config"),
        "{e}"
    );
    let mut extra = full.clone();
    extra.push(f64t("layers.1.bn.running_mean", &[4]));
    let e = load_error(&dir, &extra, &meta);
    assert!(
        e.contains("unexpected tensor 'layers.1.bn.running_mean'"),
        "{e}"
    );
    let mut misshapen = full.clone();
    let w = misshapen
        .iter_mut()
        .find(|t| t.name == "layers.1.weight")
        .unwrap();
    w.shape = vec![w.shape[1], w.shape[0]];
    let e = load_error(&dir, &misshapen, &meta);
    assert!(
        e.contains("tensor 'layers.1.weight' has shape [5, 4], the config requires [4, 5]"),
        "{e}"
    );
    let mut bad_meta = meta.clone();
    bad_meta.insert("config".into(), "{\"input_dim\": 3".into());
    let e = load_error(&dir, &full, &bad_meta);
    assert!(
        e.contains("metadata 'config' is not a valid MLP config"),
        "{e}"
    );
    bad_meta.insert("format_version".into(), "99".into());
    let e = load_error(&dir, &full, &bad_meta);
    assert!(
        e.contains("unsupported landscape-mlp format_version '99'"),
        "{e}"
    );

    // A missing file is an I/O error naming the path.
    let e = load_mlp_f64(&dir.join("nope.safetensors"), &ImportOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("nope.safetensors"));
}

#[test]
fn export_npy_and_csv() {
    let m = &assorted_models()[4]; // leaky relu, bias, affine BN
    let dir = scratch("export");
    npy::export_model(m, &dir, ExportFormat::Npy).unwrap();
    let params = npy::read_npy(&dir.join("params.npy")).unwrap();
    assert_eq!(params.shape, vec![m.num_params()]);
    assert_eq!(params.data, m.param_vector());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "landscape-export");
    assert_eq!(manifest["dtype"], "f64");
    assert_eq!(manifest["num_params"], m.num_params());
    let tensors = manifest["tensors"].as_array().unwrap();
    let mut named: Vec<(String, &Matrix<f64>, bool)> = m
        .named_params()
        .into_iter()
        .map(|(n, t)| (n, t, true))
        .collect();
    named.extend(m.named_buffers().into_iter().map(|(n, t)| (n, t, false)));
    assert_eq!(tensors.len(), named.len());
    for (entry, (name, t, is_param)) in tensors.iter().zip(&named) {
        assert_eq!(entry["name"], name.as_str());
        let arr = npy::read_npy(&dir.join(entry["file"].as_str().unwrap())).unwrap();
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(arr.shape, shape);
        assert_eq!(arr.data, t.as_slice());
        if *is_param {
            let off = entry["offset"].as_u64().unwrap() as usize;
            assert_eq!(&params.data[off..off + t.len()], t.as_slice());
            assert_eq!(entry["kind"], "param");
        } else {
            assert!(entry["offset"].is_null());
            assert_eq!(entry["kind"], "buffer");
        }
    }
    assert_eq!(
        tensors[0]["shape"],
        serde_json::json!([m.layers[0].weight.rows(), m.layers[0].weight.cols()])
    );
    // f32 models export '<f4'.
    let dir32 = scratch("export32");
    npy::export_model(&m.cast::<f32>(), &dir32, ExportFormat::Npy).unwrap();
    let p32 = npy::read_npy(&dir32.join("params.npy")).unwrap();
    assert_eq!(p32.dtype, npy::NpyDtype::F32);
    // CSV: the same numbers as text, bit-exact on reading back.
    let dircsv = scratch("export_csv");
    npy::export_model(m, &dircsv, ExportFormat::Csv).unwrap();
    let text = std::fs::read_to_string(dircsv.join("params.csv")).unwrap();
    let back: Vec<f64> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(back, m.param_vector());
    let w = std::fs::read_to_string(dircsv.join("layers.0.weight.csv")).unwrap();
    assert_eq!(w.lines().count(), m.layers[0].weight.rows());
    assert_eq!(
        w.lines().next().unwrap().split(',').count(),
        m.layers[0].weight.cols()
    );
}
