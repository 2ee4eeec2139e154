//! Lemma 2 on real data: how much the mean loss over the first `k` samples
//! changes when sample `k+1` is added, `|L_{k+1}(t) - L_k(t)|`, at the trained
//! point and at points `t = t* + R d / ||d||` (Gaussian `d`, seeded), over random
//! orderings, against the printed bound `2/(k+1) (M_l + Thm1 R^2)` and the sharper
//! `(M_l + 1/2 M_H R^2)/(k+1)`.
//!
//! With per-sample losses `l` in the order `pi`, `L_k = (1/k) sum_{j<=k} l_pi(j)` and
//! `L_{k+1} - L_k = (l_pi(k+1) - L_k) / (k+1)` exactly.

use crate::error::{Error, Result};
use crate::nn::Mlp;
use crate::rng::Rng;
use crate::tensor::Matrix;
use serde::Serialize;

/// `k = 1, 2, 4, ...` (roughly `per_decade` points per decade), up to `m - 1`.
pub fn log_grid(m: usize, per_decade: usize) -> Vec<usize> {
    let mut ks = Vec::new();
    if m < 2 {
        return ks;
    }
    let steps = ((m as f64 - 1.0).log10() * per_decade as f64).ceil() as usize;
    for s in 0..=steps {
        let k = 10f64.powf(s as f64 / per_decade as f64).round() as usize;
        let k = k.clamp(1, m - 1);
        if ks.last() != Some(&k) {
            ks.push(k);
        }
    }
    ks
}

/// Mean and maximum over orderings of `|L_{k+1} - L_k|` for each `k` in `ks`.
pub fn loss_increments(
    losses: &[f64],
    ks: &[usize],
    orderings: usize,
    seed: u64,
) -> (Vec<f64>, Vec<f64>) {
    let m = losses.len();
    let mut mean = vec![0.0; ks.len()];
    let mut max = vec![0.0f64; ks.len()];
    for o in 0..orderings {
        let perm = Rng::derived(seed, o as u64).permutation(m);
        let mut prefix = 0.0;
        let mut next_k = 0;
        for (j, &i) in perm.iter().enumerate() {
            let k = j; // `prefix` holds the sum of the first k losses.
            if next_k < ks.len() && ks[next_k] == k {
                let lk = prefix / k as f64;
                let d = ((losses[i] - lk) / (k as f64 + 1.0)).abs();
                mean[next_k] += d / orderings as f64;
                max[next_k] = max[next_k].max(d);
                next_k += 1;
            }
            prefix += losses[i];
        }
    }
    (mean, max)
}

/// One radius of the Lemma 2 experiment.
#[derive(Clone, Debug, Serialize)]
pub struct Lemma2Point {
    pub radius: f64,
    pub draw: usize,
    /// Largest per-sample loss at this point.
    pub max_loss: f64,
    pub ks: Vec<usize>,
    pub mean_abs_increment: Vec<f64>,
    pub max_abs_increment: Vec<f64>,
    pub printed_bound: Vec<f64>,
    pub sharper_bound: Vec<f64>,
    /// Whether every ordering's increment stayed below each bound at every k.
    pub printed_holds: bool,
    pub sharper_holds: bool,
}

/// Runs the experiment: `radii` (0 = the trained point), `draws` random
/// directions per positive radius, `orderings` random orderings.
#[allow(clippy::too_many_arguments)]
pub fn lemma2_experiment(
    model: &Mlp<f64>,
    x: &Matrix<f64>,
    labels: &[usize],
    radii: &[f64],
    draws: usize,
    orderings: usize,
    m_l: f64,
    thm1: f64,
    m_h: f64,
    seed: u64,
) -> Result<Vec<Lemma2Point>> {
    if x.rows() < 2 {
        return Err(Error::InvalidArgument(
            "Lemma 2 needs at least 2 samples".into(),
        ));
    }
    if orderings == 0 {
        return Err(Error::InvalidArgument(
            "Lemma 2 needs at least one ordering".into(),
        ));
    }
    if radii.iter().any(|r| !(r.is_finite() && *r >= 0.0)) {
        return Err(Error::InvalidArgument(
            "radii must be finite and >= 0".into(),
        ));
    }
    let ks = log_grid(x.rows(), 10);
    let theta = model.param_vector();
    let mut out = Vec::new();
    for &r in radii {
        let n_draws = if r == 0.0 { 1 } else { draws.max(1) };
        for draw in 0..n_draws {
            let mut m = model.clone();
            if r > 0.0 {
                let mut rng = Rng::derived(seed, 1000 + draw as u64);
                let d: Vec<f64> = theta.iter().map(|_| rng.normal()).collect();
                let dn = d.iter().map(|v| v * v).sum::<f64>().sqrt();
                let moved: Vec<f64> = theta.iter().zip(&d).map(|(t, v)| t + r * v / dn).collect();
                m.set_param_vector(&moved)?;
            }
            let z = m.logits(x)?;
            let losses = m.config.loss.per_sample(&z, labels);
            let (mean, max) = loss_increments(&losses, &ks, orderings, seed);
            let printed: Vec<f64> = ks
                .iter()
                .map(|&k| super::lemma2_printed(k, m_l, thm1, r))
                .collect();
            let sharper: Vec<f64> = ks
                .iter()
                .map(|&k| super::lemma2_sharper(k, m_l, m_h, r))
                .collect();
            out.push(Lemma2Point {
                radius: r,
                draw,
                max_loss: losses.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                printed_holds: max.iter().zip(&printed).all(|(a, b)| a <= b),
                sharper_holds: max.iter().zip(&sharper).all(|(a, b)| a <= b),
                ks: ks.clone(),
                mean_abs_increment: mean,
                max_abs_increment: max,
                printed_bound: printed,
                sharper_bound: sharper,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increments_match_direct_means() {
        let losses = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        let ks = vec![1, 2, 5, 7];
        let (mean, max) = loss_increments(&losses, &ks, 1, 42);
        let perm = Rng::derived(42, 0).permutation(8);
        for (t, &k) in ks.iter().enumerate() {
            let lk: f64 = perm[..k].iter().map(|&i| losses[i]).sum::<f64>() / k as f64;
            let lk1: f64 = perm[..k + 1].iter().map(|&i| losses[i]).sum::<f64>() / (k + 1) as f64;
            assert!((mean[t] - (lk1 - lk).abs()).abs() < 1e-14);
            assert_eq!(mean[t], max[t]);
        }
    }

    #[test]
    fn log_grid_is_increasing_and_bounded() {
        let g = log_grid(8000, 10);
        assert_eq!(g[0], 1);
        assert_eq!(*g.last().unwrap(), 7999);
        assert!(g.windows(2).all(|w| w[0] < w[1]));
        assert!(log_grid(1, 10).is_empty());
    }
}

/// Exact `||H_{pi(k+1)} - H(k)||_2` for one ordering, where `H_i` is the Hessian
/// of sample `i` and `H(k)` the mean Hessian of the first `k` samples in the order.
#[derive(Clone, Debug, Serialize)]
pub struct HessianIncrement {
    pub k: usize,
    /// `max(|lambda_max|, |lambda_min|)` of the difference (Lanczos Ritz values).
    pub norm: f64,
    /// True residual `||D v - l v||` of the Ritz pair giving the norm.
    pub residual: f64,
    pub converged: bool,
}

struct Difference<'a> {
    one: crate::hessian::HessianOperator<'a>,
    mean: crate::hessian::HessianOperator<'a>,
}

impl crate::linalg::SymOp for Difference<'_> {
    fn dim(&self) -> usize {
        self.one.dim()
    }
    fn apply(&self, v: &[f64], out: &mut [f64]) {
        // A failed product (non-finite input) surfaces as NaN, which Lanczos rejects.
        match (self.one.apply(v), self.mean.apply(v)) {
            (Ok(a), Ok(b)) => {
                for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
                    *o = x - y;
                }
            }
            _ => out.fill(f64::NAN),
        }
    }
}

/// [`HessianIncrement`]s for every `k` in `ks` (each `< x.rows()`), ordering `Rng::derived(seed, 0)`.
pub fn hessian_increments(
    model: &Mlp<f64>,
    x: &Matrix<f64>,
    labels: &[usize],
    ks: &[usize],
    seed: u64,
    tol: f64,
) -> Result<Vec<HessianIncrement>> {
    use crate::hessian::{HessianOperator, Part};
    use crate::linalg::LanczosOptions;
    let m = x.rows();
    if let Some(&k) = ks.iter().find(|&&k| k == 0 || k >= m) {
        return Err(Error::InvalidArgument(format!(
            "k = {k} must be in 1..{}",
            m.saturating_sub(1)
        )));
    }
    let perm = Rng::derived(seed, 0).permutation(m);
    ks.iter()
        .map(|&k| {
            let first = x.select_rows(&perm[..k]);
            let first_y: Vec<usize> = perm[..k].iter().map(|&i| labels[i]).collect();
            let next = perm[k];
            let xn = x.rows_view(next, next + 1).to_owned();
            let op = Difference {
                one: HessianOperator::new(model, &xn, &labels[next..next + 1], Part::Full)?,
                mean: HessianOperator::new(model, &first, &first_y, Part::Full)?,
            };
            let opts = LanczosOptions {
                max_iter: crate::linalg::SymOp::dim(&op).min(300),
                tol,
                seed: seed ^ k as u64,
                ..Default::default()
            };
            let on = crate::linalg::operator_norm(&op, &opts)?;
            Ok(HessianIncrement {
                k,
                norm: on.norm,
                residual: on.residual,
                converged: on.converged,
            })
        })
        .collect()
}
