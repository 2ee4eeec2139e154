//! Li et al.'s experiment (docs/experiments/li-et-al/run.sh) end to end at a tiny
//! size, the `--wide` width multiplier against a hand count, and figure words.

use crate::common::TempDir;
use landscape::nn::arch::{preset, PresetOptions};
use landscape::nn::LossKind;
use landscape::plot::{humanize, quantity_name};
use std::process::Command;

fn opts(width: usize, wide: usize) -> PresetOptions {
    PresetOptions {
        input_shape: [1, 28, 28],
        classes: 10,
        loss: LossKind::CrossEntropy,
        width,
        wide,
        mlp: None,
    }
}

/// ResNet-20 with first-stage width `c`, 1 input channel, 10 classes, counted by
/// hand: conv1 `9c` + bn `2c`; stage 1 three blocks of two `3x3 c->c` convs and
/// two BNs (`54c^2 + 12c`); stage 2 (`2c`) `18c^2 + 36c^2 + 8c` plus the 1x1
/// shortcut `2c^2 + 4c` and two more blocks `2 (72c^2 + 8c)`; stage 3 (`4c`)
/// `72c^2 + 144c^2 + 16c + 8c^2 + 8c + 2 (288c^2 + 16c)`; linear `40c + 10`.
/// Without shortcuts: minus `10c^2 + 12c`.
fn resnet20_count(c: usize, short: bool) -> usize {
    let full = 1054 * c * c + 147 * c + 10;
    if short {
        full
    } else {
        full - (10 * c * c + 12 * c)
    }
}

#[test]
fn wide_multiplies_resnet_channels() {
    let n = |name: &str, width, wide| {
        preset(name, &opts(width, wide))
            .unwrap()
            .num_params()
            .unwrap()
    };
    assert_eq!(n("resnet20", 16, 1), resnet20_count(16, true));
    assert_eq!(n("resnet20", 4, 2), resnet20_count(8, true));
    assert_eq!(n("resnet20", 4, 1), resnet20_count(4, true));
    assert_eq!(n("resnet20-noshort", 4, 2), resnet20_count(8, false));
    assert!(preset("resnet20", &opts(4, 0)).is_err());
}

#[test]
fn quantity_keys_have_words() {
    for k in [
        "train_loss",
        "test_loss",
        "lambda_max",
        "lambda_min",
        "abs_ratio_min_max",
        "trace",
    ] {
        let w = quantity_name(k).unwrap();
        assert!(!w.contains('_') || w.contains("\u{3bb}_"), "{k}: {w}");
        assert_ne!(humanize(k), k);
    }
}

/// The experiment's script at a tiny size: every command runs, writes its JSON,
/// and the surface figures carry words, not keys.
#[test]
fn li_et_al_script_end_to_end_tiny() {
    let dir = TempDir::new("li_et_al");
    let out = dir.join("r");
    let o = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/experiments/li-et-al/run.sh"
        ))
        .envs([
            ("L", env!("CARGO_BIN_EXE_landscape")),
            ("OUT", out.to_str().unwrap()),
            ("NTRAIN", "64"),
            ("NTEST", "32"),
            ("SMALL", "2"),
            ("BIG", "64"),
            ("EPOCHS", "1"),
            ("LINE_N", "3"),
            ("LSAMPLES", "16"),
            ("LTEST", "32"),
            ("DEPTHS", "20"),
            ("RTRAIN", "32"),
            ("REPOCHS", "1"),
            ("RWIDTH", "1"),
            ("GRID", "2"),
            ("SSAMPLES", "8"),
            ("CGRID", "1"),
            ("CSAMPLES", "4"),
            ("RAYON_NUM_THREADS", "1"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "train_bs2_wd0.json",
        "train_bs64_wd5e-4.json",
        "interp_wd0.json",
        "filter_bs64_wd0.json",
        "raw_bs2_wd5e-4.json",
        "train_resnet20_w1.json",
        "surface_resnet20-noshort_w1.json",
        "surface_resnet20_w2.json",
    ] {
        let p = out.join(f);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert!(
            v.get("provenance").is_some() || v.get("results").is_some(),
            "{f}"
        );
    }
    let svg = std::fs::read_to_string(out.join("surface_resnet20_w1_train_loss.svg")).unwrap();
    assert!(svg.contains("training loss"), "title in words");
    assert!(svg.contains("filter-normalised random direction 1"));
    assert!(!svg.contains(">train_loss<"));
    let svg =
        std::fs::read_to_string(out.join("surface_resnet20_w1_abs_ratio_min_max.svg")).unwrap();
    assert!(!svg.contains("abs_ratio_min_max"), "raw key in a figure");
    // The 1-D plots and the 3-D render carry words and a caption too.
    let svg = std::fs::read_to_string(out.join("filter_bs64_wd0_loss.svg")).unwrap();
    assert!(
        svg.contains("along filter-normalised random direction 1"),
        "line title"
    );
    assert!(svg.contains("loss (mean cross-entropy)"), "line y axis");
    assert!(svg.contains("16 training samples"), "line caption");
    let svg = std::fs::read_to_string(out.join("raw_bs2_wd0_loss.svg")).unwrap();
    assert!(svg.contains("unnormalised random direction 1"));
    let svg = std::fs::read_to_string(out.join("interp_wd0_error.svg")).unwrap();
    assert!(svg.contains("alpha (0 = conv_bs2_wd0.safetensors, 1 = conv_bs64_wd0.safetensors)"));
    let svg = std::fs::read_to_string(out.join("surface_resnet20_w1_train_loss_3d.svg")).unwrap();
    assert!(
        svg.contains("filter-normalised random direction 2"),
        "3-D axis names"
    );
    assert!(svg.contains("training samples"), "3-D caption");
    // The surface JSON holds its maps (what summarize.py reads).
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("surface_resnet20_w1.json")).unwrap(),
    )
    .unwrap();
    let tl = &v["results"]["maps"]["train_loss"];
    assert_eq!(tl.as_array().map(|r| r.len()), Some(2), "2 x 2 grid rows");
    assert!(v["results"]["direction_x"]["bias_bn"] == "zero");
    // surface-replot draws the stored words.
    let o = Command::new(env!("CARGO_BIN_EXE_landscape"))
        .args(["surface-replot"])
        .arg(out.join("surface_resnet20_w1.safetensors"))
        .arg("--fig")
        .arg(out.join("replot"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let svg = std::fs::read_to_string(out.join("replot_train_loss.svg")).unwrap();
    assert!(
        svg.contains("filter-normalised random direction 1"),
        "replot axis names"
    );
}

/// loss-landscape's `--xignore biasbn` (bias and BatchNorm entries zero) and
/// `--xignore none` / `--biasbn` (those entries are the model's own values), against a
/// direction built by hand from the same Gaussian draws: `N(0, 1)` per parameter in
/// parameter order, each weight row (conv output filter, linear row) rescaled to the
/// norm of the model's row.
#[test]
fn xignore_and_biasbn_match_a_hand_built_direction() {
    use landscape::experiments::geometry::{
        random_direction_with, random_network_direction_with, BiasBn, Normalization,
    };
    use landscape::nn::arch::ParamRole;
    use landscape::nn::{Init, Network};
    use landscape::rng::Rng;
    let mut o = opts(1, 1);
    o.input_shape = [1, 8, 8];
    let arch = preset("resnet20", &o).unwrap();
    let mut net = Network::init(arch, Init::Torch, 1.0, 3).unwrap();
    // BatchNorm gammas/betas and the linear bias away from their 1/0 initial values.
    let mut theta = net.param_vector();
    let mut r = Rng::new(17);
    theta.iter_mut().for_each(|v| *v += 0.3 * r.normal());
    net.set_param_vector(&theta).unwrap();
    let roles = net.layout().param_roles.clone();
    assert!(roles.contains(&ParamRole::BnWeight) && roles.contains(&ParamRole::Bias));
    let seed = 5;
    for bias_bn in [BiasBn::Zero, BiasBn::Copy] {
        let mut g = Rng::new(seed);
        let mut want = Vec::new();
        for (w, role) in net.params.iter().zip(&roles) {
            let draw: Vec<f64> = (0..w.len()).map(|_| g.normal()).collect();
            match role {
                ParamRole::ConvWeight | ParamRole::LinearWeight => {
                    for (a, row) in draw.chunks(w.cols()).enumerate() {
                        let wn = w.row(a).iter().map(|v| v * v).sum::<f64>().sqrt();
                        let dn = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                        want.extend(row.iter().map(|v| v * wn / dn));
                    }
                }
                _ => match bias_bn {
                    BiasBn::Zero => want.extend(std::iter::repeat_n(0.0, w.len())),
                    _ => want.extend_from_slice(w.as_slice()),
                },
            }
        }
        let got =
            random_network_direction_with(&net, Normalization::Filter, bias_bn, seed).unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                "{bias_bn:?} entry {i}: {a} vs {b}"
            );
        }
    }
    // An MLP with biases: the MLP fast path's direction is the network's.
    let m = landscape::nn::Mlp::<f64>::init(
        crate::common::mlp_config(
            &[6, 4, 3],
            landscape::nn::Activation::Tanh,
            true,
            LossKind::CrossEntropy,
        ),
        Init::Torch,
        1.0,
        2,
    )
    .unwrap();
    let as_net = Network::from_mlp(&m);
    for b in [BiasBn::Zero, BiasBn::Copy, BiasBn::Normalise] {
        assert_eq!(
            random_direction_with(&m, Normalization::Layer, b, 4).unwrap(),
            random_network_direction_with(&as_net, Normalization::Layer, b, 4).unwrap()
        );
    }
}

/// `--biasbn` is `--xignore none`; `--keep-bias` with either is a one-line error.
#[test]
fn biasbn_flag_is_xignore_none() {
    let dir = TempDir::new("li_xignore");
    let bin = env!("CARGO_BIN_EXE_landscape");
    let model = dir.join("m.safetensors");
    let run = |args: &[&str]| {
        Command::new(bin)
            .args(["--threads", "1"])
            .args(args)
            .output()
            .unwrap()
    };
    let d = [
        "--data",
        "digits",
        "--train-size",
        "64",
        "--test-size",
        "32",
    ];
    let o = run(&[
        &[
            "train",
            "--hidden",
            "5",
            "--epochs",
            "1",
            "--out",
            model.to_str().unwrap(),
        ][..],
        &d,
    ]
    .concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = |flag: &[&str], name: &str| {
        let j = dir.join(name);
        let mut a = vec!["line", "--model", model.to_str().unwrap(), "--range=-1:1:3"];
        a.extend_from_slice(&d);
        a.extend_from_slice(flag);
        a.extend_from_slice(&["--json", j.to_str().unwrap()]);
        let o = run(&a);
        (o, j)
    };
    let results = |j: &std::path::Path| {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(j).unwrap()).unwrap();
        v["results"]["train_loss"].clone()
    };
    let (o1, j1) = line(&["--biasbn"], "a.json");
    let (o2, j2) = line(&["--xignore", "none"], "b.json");
    let (o3, j3) = line(&[], "c.json");
    assert!(o1.status.success() && o2.status.success() && o3.status.success());
    assert_eq!(results(&j1), results(&j2));
    assert_ne!(
        results(&j1),
        results(&j3),
        "biases included must move the line"
    );
    let (o, _) = line(&["--keep-bias", "--biasbn"], "d.json");
    assert!(!o.status.success());
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
}
