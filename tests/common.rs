//! Helpers shared by the integration-test modules.

use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("landscape-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An MLP configuration from its widths `[input, hidden..., classes]` (LeakyReLU slope 0.1,
/// no BatchNorm), the shape every test module uses.
pub fn mlp_config(
    widths: &[usize],
    act: landscape::nn::Activation,
    bias: bool,
    loss: landscape::nn::LossKind,
) -> landscape::nn::MlpConfig {
    landscape::nn::MlpConfig {
        input_dim: widths[0],
        hidden: widths[1..widths.len() - 1].to_vec(),
        classes: *widths.last().unwrap(),
        activation: act,
        leaky_slope: 0.1,
        bias,
        batchnorm: None,
        loss,
    }
}
