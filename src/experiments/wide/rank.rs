//! Singular values of feature matrices by the one-sided Jacobi method (Hestenes
//! 1958; accurate small singular values, no `A^T A`), rank decisions with a stated
//! tolerance and their margin, and the least-squares residual of targets on the
//! column space (the best output layer on fixed features).
#![allow(clippy::needless_range_loop)]

use crate::tensor::Matrix;
use serde::Serialize;

/// Singular values (descending) of `a` and an orthonormal basis of its column space
/// for the singular values above `tol * sigma_max`.
pub struct Svd {
    pub sigma: Vec<f64>,
    /// Left singular vectors (as columns, `m x r`) of the kept singular values.
    pub u_kept: Matrix<f64>,
    /// Their right singular vectors (`n x r`) and values: `a = U S V^T` on the kept part.
    pub v_kept: Matrix<f64>,
    pub sigma_kept: Vec<f64>,
}

impl Svd {
    /// The minimum-norm least-squares solution `B` (`n x k`) of `a B = y`.
    pub fn solve(&self, y: &Matrix<f64>) -> Matrix<f64> {
        let (m, r, k) = (y.rows(), self.u_kept.cols(), y.cols());
        let n = self.v_kept.rows();
        let mut b = Matrix::zeros(n, k);
        for j in 0..r {
            for c in 0..k {
                let coef: f64 = (0..m)
                    .map(|i| self.u_kept.get(i, j) * y.get(i, c))
                    .sum::<f64>()
                    / self.sigma_kept[j];
                for i in 0..n {
                    let v = b.get(i, c) + coef * self.v_kept.get(i, j);
                    b.set(i, c, v);
                }
            }
        }
        b
    }
}

/// One-sided Jacobi SVD of an `m x n` matrix: rotates pairs of columns until all
/// are mutually orthogonal (to `1e-15` relative); column norms are the singular
/// values. Deterministic (cyclic order). A wide matrix is handled through its
/// transpose (fewer columns to rotate).
pub fn jacobi_svd(a: &Matrix<f64>, tol: f64) -> Svd {
    if a.cols() > a.rows() {
        // Wide: rotate the fewer columns of `a^T` and swap the singular vectors.
        let t = jacobi_svd_tall(&a.transpose(), tol);
        return Svd {
            sigma: t.sigma,
            u_kept: t.v_kept,
            v_kept: t.u_kept,
            sigma_kept: t.sigma_kept,
        };
    }
    jacobi_svd_tall(a, tol)
}

fn jacobi_svd_tall(a: &Matrix<f64>, tol: f64) -> Svd {
    let (m, n) = (a.rows(), a.cols());
    // Work on columns stored contiguously.
    let mut cols: Vec<Vec<f64>> = (0..n)
        .map(|j| (0..m).map(|i| a.get(i, j)).collect())
        .collect();
    // Accumulated right rotations: column j of `v` is the j-th column of V.
    let mut vcols: Vec<Vec<f64>> = (0..n)
        .map(|j| (0..n).map(|i| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for i in 0..m {
                    let (x, y) = (cols[p][i], cols[q][i]);
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                let (left, right) = cols.split_at_mut(q);
                let (cp, cq) = (&mut left[p], &mut right[0]);
                for i in 0..m {
                    let (x, y) = (cp[i], cq[i]);
                    cp[i] = c * x - s * y;
                    cq[i] = s * x + c * y;
                }
                let (left, right) = vcols.split_at_mut(q);
                let (vp, vq) = (&mut left[p], &mut right[0]);
                for i in 0..n {
                    let (x, y) = (vp[i], vq[i]);
                    vp[i] = c * x - s * y;
                    vq[i] = s * x + c * y;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut pairs: Vec<(f64, usize)> = cols
        .iter()
        .enumerate()
        .map(|(j, c)| (c.iter().map(|v| v * v).sum::<f64>().sqrt(), j))
        .collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let k = m.min(n);
    let sigma: Vec<f64> = pairs.iter().take(k).map(|p| p.0).collect();
    let smax = sigma.first().copied().unwrap_or(0.0);
    let kept: Vec<usize> = pairs
        .iter()
        .take(k)
        .filter(|p| p.0 > tol * smax && p.0 > 0.0)
        .map(|p| p.1)
        .collect();
    let norm_of = |j: usize| pairs.iter().find(|p| p.1 == j).map_or(1.0, |p| p.0);
    let u_kept = Matrix::from_fn(m, kept.len(), |i, r| cols[kept[r]][i] / norm_of(kept[r]));
    let v_kept = Matrix::from_fn(n, kept.len(), |i, r| vcols[kept[r]][i]);
    let sigma_kept = kept.iter().map(|&j| norm_of(j)).collect();
    Svd {
        sigma,
        u_kept,
        v_kept,
        sigma_kept,
    }
}

/// The numerical rank of a matrix with the tolerance and margins that decided it.
#[derive(Clone, Debug, Serialize)]
pub struct RankReport {
    pub rows: usize,
    pub cols: usize,
    /// Relative tolerance: singular values `> tol * sigma_max` count.
    pub tol: f64,
    pub rank: usize,
    pub sigma_max: f64,
    /// Smallest of the `min(rows, cols)` singular values.
    pub sigma_min: f64,
    /// Smallest counted singular value over `sigma_max` (the condition number of the
    /// kept part is its inverse).
    pub kept_ratio: f64,
    /// `log10((sigma_r / sigma_max) / tol)`: how far above the tolerance the smallest
    /// counted singular value is (the decision's margin; small = fragile).
    pub margin_decades: f64,
    /// `sigma_r / sigma_{r+1}` (the gap at the rank; infinite when full rank).
    pub gap: f64,
    /// `sigma_max / sigma_min` over all `min(rows, cols)` singular values.
    pub condition: f64,
}

/// Default relative tolerance for an `m x n` matrix: `max(m, n) * eps_f64` (the
/// convention of LAPACK-based rank routines).
pub fn default_tol(m: usize, n: usize) -> f64 {
    m.max(n) as f64 * f64::EPSILON
}

pub fn rank_report(sigma: &[f64], rows: usize, cols: usize, tol: f64) -> RankReport {
    let smax = sigma.first().copied().unwrap_or(0.0);
    let rank = sigma.iter().filter(|&&s| s > tol * smax && s > 0.0).count();
    let smin = sigma.last().copied().unwrap_or(0.0);
    let kept = if rank > 0 { sigma[rank - 1] } else { 0.0 };
    let next = sigma.get(rank).copied();
    RankReport {
        rows,
        cols,
        tol,
        rank,
        sigma_max: smax,
        sigma_min: smin,
        kept_ratio: if smax > 0.0 { kept / smax } else { 0.0 },
        margin_decades: if smax > 0.0 && kept > 0.0 {
            (kept / smax / tol).log10()
        } else {
            f64::NEG_INFINITY
        },
        gap: match next {
            Some(s) if s > 0.0 => kept / s,
            _ => f64::INFINITY,
        },
        condition: if smin > 0.0 {
            smax / smin
        } else {
            f64::INFINITY
        },
    }
}

/// `[a, 1]`: the matrix with a column of ones appended (an output bias).
pub fn with_ones(a: &Matrix<f64>) -> Matrix<f64> {
    Matrix::from_fn(a.rows(), a.cols() + 1, |i, j| {
        if j < a.cols() {
            a.get(i, j)
        } else {
            1.0
        }
    })
}

/// `(1/m) ||(I - U U^T) Y||_F^2`: the squared loss of the best linear map from the
/// columns of `U`'s space to the targets `y` (the best output layer on fixed features).
pub fn projection_residual(u: &Matrix<f64>, y: &Matrix<f64>) -> f64 {
    let (m, r, k) = (y.rows(), u.cols(), y.cols());
    let mut total = 0.0;
    for c in 0..k {
        let col: Vec<f64> = (0..m).map(|i| y.get(i, c)).collect();
        let mut res = col.clone();
        for j in 0..r {
            let coef: f64 = (0..m).map(|i| u.get(i, j) * col[i]).sum();
            for i in 0..m {
                res[i] -= coef * u.get(i, j);
            }
        }
        // Second pass (re-orthogonalisation) for accuracy.
        for j in 0..r {
            let coef: f64 = (0..m).map(|i| u.get(i, j) * res[i]).sum();
            for i in 0..m {
                res[i] -= coef * u.get(i, j);
            }
        }
        total += res.iter().map(|v| v * v).sum::<f64>();
    }
    total / m.max(1) as f64
}

/// Settings of the rank experiment.
#[derive(Clone, Debug, Serialize)]
pub struct RankConfig {
    pub activations: Vec<crate::nn::Activation>,
    pub widths: Vec<usize>,
    pub init_scales: Vec<f64>,
    /// Constant added to every first-layer bias after initialisation (negative
    /// shifts switch ReLU units off).
    pub bias_shifts: Vec<f64>,
    pub draws: usize,
    pub seed: u64,
    /// Relative rank tolerance; `None` uses [`default_tol`].
    pub tol: Option<f64>,
}

/// One (activation, width, scale, shift) cell over `draws` random initialisations.
#[derive(Clone, Debug, Serialize)]
pub struct RankCell {
    pub activation: String,
    pub width: usize,
    pub init_scale: f64,
    pub bias_shift: f64,
    pub draws: usize,
    /// Rank of `X1` (`m x n1`) per draw, and of `[X1, 1]` (output bias).
    pub ranks: Vec<usize>,
    pub ranks_with_ones: Vec<usize>,
    /// Fraction of draws with `rank [X1, 1] < min(m, n1 + 1)`: rank-deficient features.
    pub frac_deficient: f64,
    /// Fraction of draws with `rank [X1, 1] < m` (the output layer cannot fit every target).
    pub frac_below_m: f64,
    /// Median over draws of the smallest singular value of `[X1, 1]` over the largest.
    pub median_min_ratio: f64,
    /// Smallest margin (decades above the tolerance) over the draws.
    pub min_margin_decades: f64,
    /// Median over draws of the best output layer's loss on the fixed features
    /// (closed form, the least-squares residual on `[X1, 1]`).
    pub median_ls_loss: f64,
    /// Samples with every unit inactive (ReLU: all pre-activations `<= 0`), max over draws.
    pub max_dead_samples: usize,
    /// Median over draws of the units whose pre-activation has one sign on every
    /// sample: `> 0` everywhere ("linear": for ReLU the column is an affine function of
    /// the inputs, so all of them together add at most `rank [X, 1]` to the rank) and
    /// `<= 0` everywhere ("dead": for ReLU a zero column).
    pub median_always_positive_units: f64,
    pub median_never_positive_units: f64,
    /// Singular values of `[X1, 1]` of the first draw (for the spectra figure).
    pub sigma_first: Vec<f64>,
    pub report_first: RankReport,
}

/// Rank of the features `X1 = act(X W1^T + b1)` at random initialisation.
pub fn rank_experiment(
    x: &Matrix<f64>,
    y: &Matrix<f64>,
    cfg: &RankConfig,
    progress: super::Progress<'_>,
) -> crate::error::Result<Vec<RankCell>> {
    use rayon::prelude::*;
    let m = x.rows();
    let mut jobs = Vec::new();
    for &act in &cfg.activations {
        for &w in &cfg.widths {
            for &sc in &cfg.init_scales {
                for &sh in &cfg.bias_shifts {
                    jobs.push((act, w, sc, sh));
                }
            }
        }
    }
    jobs.into_par_iter()
        .map(|(act, w, sc, sh)| {
            let mcfg = super::mse_config(x.cols(), &[w], y.cols(), act, true);
            let mut ranks = Vec::new();
            let mut ranks1 = Vec::new();
            let mut ratios = Vec::new();
            let mut margins = Vec::new();
            let mut ls = Vec::new();
            let mut dead_max = 0;
            let mut pos_units = Vec::new();
            let mut neg_units = Vec::new();
            let mut first = None;
            for d in 0..cfg.draws {
                let seed = cfg.seed ^ (d as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut model =
                    crate::nn::Mlp::<f64>::init(mcfg.clone(), crate::nn::Init::Torch, sc, seed)?;
                if let Some(b) = model.layers[0].bias.as_mut() {
                    for v in b.as_mut_slice() {
                        *v += sh;
                    }
                }
                let fwd = model.forward_with(x, crate::tensor::Par::Seq)?;
                let x1 = &fwd.inputs[1];
                let dead = (0..m)
                    .filter(|&i| fwd.pre[0].row(i).iter().all(|&z| z <= 0.0))
                    .count();
                dead_max = dead_max.max(dead);
                let z0 = &fwd.pre[0];
                let col_all = |f: &dyn Fn(f64) -> bool| {
                    (0..w).filter(|&j| (0..m).all(|i| f(z0.get(i, j)))).count() as f64
                };
                pos_units.push(col_all(&|z| z > 0.0));
                neg_units.push(col_all(&|z| z <= 0.0));
                let tol0 = cfg.tol.unwrap_or(default_tol(m, w));
                let s0 = jacobi_svd(x1, tol0);
                ranks.push(rank_report(&s0.sigma, m, w, tol0).rank);
                let a1 = with_ones(x1);
                let tol1 = cfg.tol.unwrap_or(default_tol(m, w + 1));
                let s1 = jacobi_svd(&a1, tol1);
                let rep = rank_report(&s1.sigma, m, w + 1, tol1);
                ranks1.push(rep.rank);
                ratios.push(rep.sigma_min / rep.sigma_max.max(1e-300));
                margins.push(rep.margin_decades);
                ls.push(projection_residual(&s1.u_kept, y));
                if first.is_none() {
                    first = Some((s1.sigma.clone(), rep));
                }
            }
            progress();
            let full = m.min(w + 1);
            let (sigma_first, report_first) = first.expect("at least one draw");
            Ok(RankCell {
                activation: act.name().into(),
                width: w,
                init_scale: sc,
                bias_shift: sh,
                draws: cfg.draws,
                frac_deficient: ranks1.iter().filter(|&&r| r < full).count() as f64
                    / cfg.draws as f64,
                frac_below_m: ranks1.iter().filter(|&&r| r < m).count() as f64 / cfg.draws as f64,
                ranks,
                ranks_with_ones: ranks1,
                median_min_ratio: median(&ratios),
                min_margin_decades: margins.iter().copied().fold(f64::INFINITY, f64::min),
                median_ls_loss: median(&ls),
                max_dead_samples: dead_max,
                median_always_positive_units: median(&pos_units),
                median_never_positive_units: median(&neg_units),
                sigma_first,
                report_first,
            })
        })
        .collect()
}

/// Median (mean of the two middle values for an even count); NaN for none.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}
