//! Sample-size convergence of the loss landscape (the seed experiment of "Unraveling
//! the Hessian", DESIGN.md section 4), extended with exact Hessians.
//!
//! For per-sample values `v_1..v_m` taken in a random order `pi` (ordering `o` is
//! `Rng::derived(seed, o).permutation(m)`, the same for every configuration), the
//! prefix means `V_k = (1/k) sum_{j<=k} v_pi(j)` change by exactly
//! `V_{k+1} - V_k = (v_pi(k+1) - V_k) / (k+1)`. With `v = l` (per-sample losses) this is
//! `L_{k+1} - L_k`, whose mean absolute value over orderings the seed plots against `k`
//! (EMA-smoothed, log-y). Its log-log slope is -1 up to the dispersion of the losses,
//! an identity the tests and the run check.
//!
//! Away from the trained point, at `t = t* + d` with `||d|| = R`, a second-order
//! expansion splits the increment into three terms of the same prefix-mean form:
//! `L_{k+1}(t) - L_k(t) ~ D0 + D1 + D2` with
//! `D0` from `v = l_i(t*)` (the loss-dispersion term, the whole increment at `t*`),
//! `D1` from `v = g_i . d` (the gradient term) and
//! `D2` from `v = 1/2 d^T H_i d` (the curvature term: `1/2 d^T (H_{k+1} - H(k)) d / (k+1)`),
//! all computed exactly per sample by `hessian::directional`.

use crate::error::{Error, Result};
use crate::nn::{Activation, LossKind, MlpConfig};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// The whole experiment, as a file (`--config sweep.json`) or from flags.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SampleSizeConfig {
    /// Dataset (`mnist10k`, `digits` or a path).
    pub data: String,
    /// First `n` training samples (default: all).
    pub train_size: Option<usize>,
    /// Widths `h` of the width sweep (at `fixed_depth` extra layers).
    pub hidden_sizes: Vec<usize>,
    /// Extra `h x h` layers of the depth sweep (at `fixed_width`); a model has `extra + 2`
    /// weight matrices, as in the seed.
    pub extra_layers: Vec<usize>,
    pub fixed_depth: usize,
    pub fixed_width: usize,
    pub orderings: usize,
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub seed: u64,
    /// EMA factor of the plotted curves: `s_k = ema s_{k-1} + (1 - ema) v_k`.
    pub ema: f64,
    /// Radii `R` of the perturbed points (0 is always included).
    pub radii: Vec<f64>,
    /// Random directions per radius.
    pub draws: usize,
    /// Compute the Hessian side (increments and eigenspace distances).
    pub hessian: bool,
    /// Configuration `(width, extra_layers)` of the Hessian side (default: fixed width and depth).
    pub hessian_config: Option<(usize, usize)>,
    /// Points per decade of the `k` grid of the Hessian side.
    pub hessian_per_decade: usize,
    /// Dimension `q` of the compared top eigenspaces.
    pub top_q: usize,
    /// Lanczos relative residual tolerance.
    pub lanczos_tol: f64,
}

impl Default for SampleSizeConfig {
    fn default() -> Self {
        Self {
            data: "mnist10k".into(),
            train_size: None,
            hidden_sizes: vec![4, 8, 16, 32, 64],
            extra_layers: vec![1, 3, 5, 7, 10],
            fixed_depth: 5,
            fixed_width: 16,
            orderings: 100,
            epochs: 10,
            lr: 1e-3,
            batch_size: 64,
            seed: 0,
            ema: 0.99,
            radii: vec![0.1, 1.0, 5.0],
            draws: 3,
            hessian: true,
            hessian_config: None,
            hessian_per_decade: 4,
            top_q: 5,
            lanczos_tol: 1e-8,
        }
    }
}

impl SampleSizeConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.hidden_sizes.is_empty() && self.extra_layers.is_empty() {
            return bad("both --hidden-sizes and --extra-layers are empty".into());
        }
        if self.hidden_sizes.contains(&0) || self.fixed_width == 0 {
            return bad("widths must be positive".into());
        }
        if self.orderings == 0 {
            return bad("--orderings must be at least 1".into());
        }
        if self.epochs == 0 || self.batch_size == 0 {
            return bad("--epochs and --batch-size must be positive".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("--lr must be positive and finite, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.ema) {
            return bad(format!("--ema must be in [0, 1), got {}", self.ema));
        }
        if self.radii.iter().any(|r| !(r.is_finite() && *r >= 0.0)) {
            return bad("radii must be finite and >= 0".into());
        }
        if self.draws == 0 {
            return bad("--draws must be at least 1".into());
        }
        if self.train_size == Some(0) || self.train_size == Some(1) {
            return bad("--train-size must be at least 2 (increments need two samples)".into());
        }
        if self.top_q == 0 || self.hessian_per_decade == 0 {
            return bad("--top-q and the grid density must be positive".into());
        }
        if !(self.lanczos_tol > 0.0 && self.lanczos_tol < 1.0) {
            return bad("--lanczos-tol must be in (0, 1)".into());
        }
        Ok(())
    }

    /// `(width, extra_layers)` of every model: the width sweep, then the depth sweep,
    /// without duplicates.
    pub fn configurations(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for &h in &self.hidden_sizes {
            out.push((h, self.fixed_depth));
        }
        for &d in &self.extra_layers {
            if !out.contains(&(self.fixed_width, d)) {
                out.push((self.fixed_width, d));
            }
        }
        out
    }

    pub fn hessian_arch(&self) -> (usize, usize) {
        self.hessian_config
            .unwrap_or((self.fixed_width, self.fixed_depth))
    }
}

/// The seed's architecture: input, `extra + 1` hidden layers of width `h`, ReLU, no biases, CE.
pub fn architecture(input: usize, classes: usize, h: usize, extra: usize) -> MlpConfig {
    MlpConfig {
        input_dim: input,
        hidden: vec![h; extra + 1],
        classes,
        activation: Activation::Relu,
        leaky_slope: 0.01,
        bias: false,
        batchnorm: None,
        loss: LossKind::CrossEntropy,
    }
}

/// `|V_{k+1} - V_k|` for `k = 1..m-1` (index `k - 1`) over `orderings` seeded orderings:
/// per-`k` mean over orderings (summed in ordering order), and 5% / 95% quantiles.
#[derive(Clone, Debug, Serialize)]
pub struct IncrementCurves {
    pub mean: Vec<f64>,
    pub p05: Vec<f64>,
    pub p95: Vec<f64>,
}

/// Signed `(v_pi(k+1) - V_k) / (k+1)` for `k = 1..m-1` under ordering `o`.
pub fn signed_increments(values: &[f64], seed: u64, o: usize) -> Vec<f64> {
    let m = values.len();
    let perm = Rng::derived(seed, o as u64).permutation(m);
    let mut out = Vec::with_capacity(m.saturating_sub(1));
    let mut prefix = values[perm[0]];
    for k in 1..m {
        let next = values[perm[k]];
        out.push((next - prefix / k as f64) / (k as f64 + 1.0));
        prefix += next;
    }
    out
}

/// [`IncrementCurves`] of `|V_{k+1} - V_k|` (needs `m >= 2`, `orderings >= 1`).
pub fn increment_curves(values: &[f64], orderings: usize, seed: u64) -> Result<IncrementCurves> {
    let m = values.len();
    if m < 2 || orderings == 0 {
        return Err(Error::InvalidArgument(format!(
            "increments need at least 2 values and 1 ordering ({m} values, {orderings} orderings)"
        )));
    }
    if !values.iter().all(|v| v.is_finite()) {
        return Err(Error::NonFiniteInput(
            "per-sample values contain NaN or Inf".into(),
        ));
    }
    if orderings.saturating_mul(m) > 100_000_000 {
        return Err(Error::InvalidArgument(format!(
            "{orderings} orderings of {m} samples would hold {} increments in memory; use at most {}",
            orderings.saturating_mul(m),
            100_000_000 / m
        )));
    }
    let all: Vec<Vec<f64>> = (0..orderings)
        .map(|o| signed_increments(values, seed, o))
        .collect();
    let mut mean = vec![0.0; m - 1];
    let mut p05 = vec![0.0; m - 1];
    let mut p95 = vec![0.0; m - 1];
    let mut col = vec![0.0; orderings];
    for j in 0..m - 1 {
        for (o, row) in all.iter().enumerate() {
            col[o] = row[j].abs();
        }
        mean[j] = col.iter().sum::<f64>() / orderings as f64;
        col.sort_by(f64::total_cmp);
        p05[j] = quantile_sorted(&col, 0.05);
        p95[j] = quantile_sorted(&col, 0.95);
    }
    Ok(IncrementCurves { mean, p05, p95 })
}

/// Linear-interpolated quantile of sorted data (`q` in `[0, 1]`).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Exponential moving average `s_0 = v_0`, `s_k = alpha s_{k-1} + (1 - alpha) v_k`.
pub fn ema(values: &[f64], alpha: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(values.len());
    let mut s = match values.first() {
        Some(&v) => v,
        None => return out,
    };
    for &v in values {
        s = alpha * s + (1.0 - alpha) * v;
        out.push(s);
    }
    out
}

/// Least-squares slope of `log10 y` against `log10 k` over `k >= k_min` with `y > 0`
/// (`ys[j]` belongs to `k = j + 1`).
pub fn loglog_slope(ys: &[f64], k_min: usize) -> Option<f64> {
    let pts: Vec<(f64, f64)> = ys
        .iter()
        .enumerate()
        .filter(|&(j, &y)| j + 1 >= k_min && y > 0.0)
        .map(|(j, &y)| (((j + 1) as f64).log10(), y.log10()))
        .collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// `sin` of the largest principal angle between the spans of two orthonormal sets
/// (`q` vectors each): `sqrt(1 - sigma_min(U^T V)^2)`.
pub fn subspace_sin(u: &[Vec<f64>], v: &[Vec<f64>]) -> f64 {
    let q = u.len().min(v.len());
    if q == 0 {
        return 1.0;
    }
    // C = U^T V (q x q); sigma_min^2 = lambda_min(C^T C).
    let c: Vec<Vec<f64>> = (0..q)
        .map(|a| (0..q).map(|b| crate::tensor::dot(&u[a], &v[b])).collect())
        .collect();
    let ctc = crate::tensor::Matrix::from_fn(q, q, |a, b| (0..q).map(|t| c[t][a] * c[t][b]).sum());
    let ev = crate::hessian::small_eig::sym_eigenvalues(&ctc);
    (1.0 - ev[0].clamp(0.0, 1.0)).max(0.0).sqrt()
}
