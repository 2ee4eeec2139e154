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
}
