//! Small statistics for the margin study: quantiles, ordinary least squares
//! with an intercept (Householder QR), the coefficient of determination, k-fold
//! cross-validated R^2, and Kendall's rank correlation (tau-b).

#![allow(clippy::needless_range_loop)] // index loops over parallel arrays read clearer

use crate::error::{Error, Result};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// Quantile `p` of sorted values by linear interpolation between order
/// statistics (numpy's default): position `(N - 1) p`.
pub fn quantile_sorted(v: &[f64], p: f64) -> f64 {
    assert!(!v.is_empty(), "quantile of no values");
    let pos = (v.len() - 1) as f64 * p;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// A fitted linear model `y ~ b0 + sum_k b_k x_k`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearFit {
    /// `[b0, b1, ..., bp]`.
    pub coefficients: Vec<f64>,
    /// In-sample predictions.
    pub fitted: Vec<f64>,
    /// `1 - SS_res / SS_tot` on the fitting data.
    pub r2: f64,
}

/// Least squares with an intercept: minimises `||y - b0 - X b||^2` over the rows
/// of `x` (each row one observation with `p` features), by Householder QR of
/// `[1 X]`. Errors when there are fewer observations than coefficients or the
/// design is rank deficient (a column within `1e-12` relative of the span of the
/// earlier ones).
pub fn least_squares(x: &[Vec<f64>], y: &[f64]) -> Result<LinearFit> {
    let n = y.len();
    if x.len() != n {
        return Err(Error::Shape(format!(
            "{} feature rows but {} responses",
            x.len(),
            n
        )));
    }
    let p = x.first().map_or(0, |r| r.len());
    if x.iter().any(|r| r.len() != p) {
        return Err(Error::Shape("feature rows of different lengths".into()));
    }
    let m = p + 1;
    if n < m {
        return Err(Error::InvalidArgument(format!(
            "least squares: {n} observations for {m} coefficients"
        )));
    }
    if x.iter().flatten().chain(y).any(|v| !v.is_finite()) {
        return Err(Error::InvalidArgument(
            "least squares: non-finite data".into(),
        ));
    }
    // Column-major design a[c][r].
    let mut a: Vec<Vec<f64>> = Vec::with_capacity(m);
    a.push(vec![1.0; n]);
    for k in 0..p {
        a.push(x.iter().map(|r| r[k]).collect());
    }
    let col_norm: Vec<f64> = a
        .iter()
        .map(|c| c.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect();
    let mut b = y.to_vec();
    for k in 0..m {
        // Householder reflector for column k, rows k..n.
        let norm = a[k][k..].iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm <= 1e-12 * col_norm[k].max(f64::MIN_POSITIVE) {
            return Err(Error::InvalidArgument(format!(
                "least squares: the design is rank deficient (feature {k} is a combination of the earlier ones)"
            )));
        }
        let alpha = if a[k][k] > 0.0 { -norm } else { norm };
        let mut v: Vec<f64> = a[k][k..].to_vec();
        v[0] -= alpha;
        let vn2: f64 = v.iter().map(|t| t * t).sum();
        let apply = |col: &mut [f64]| {
            let s: f64 = col.iter().zip(&v).map(|(c, w)| c * w).sum::<f64>() * 2.0 / vn2;
            for (c, w) in col.iter_mut().zip(&v) {
                *c -= s * w;
            }
        };
        for c in a.iter_mut().skip(k) {
            apply(&mut c[k..]);
        }
        apply(&mut b[k..]);
    }
    // Back substitution R beta = Q^T y.
    let mut beta = vec![0.0; m];
    for k in (0..m).rev() {
        let mut s = b[k];
        for j in k + 1..m {
            s -= a[j][k] * beta[j];
        }
        beta[k] = s / a[k][k];
    }
    let fitted: Vec<f64> = x.iter().map(|r| predict(&beta, r)).collect();
    let r2 = r_squared(y, &fitted);
    Ok(LinearFit {
        coefficients: beta,
        fitted,
        r2,
    })
}

/// `b0 + sum_k b_k x_k`.
pub fn predict(beta: &[f64], row: &[f64]) -> f64 {
    beta[0] + beta[1..].iter().zip(row).map(|(b, x)| b * x).sum::<f64>()
}

/// `1 - SS_res / SS_tot` with `SS_tot = sum (y - mean y)^2` (NaN when `y` is constant).
pub fn r_squared(y: &[f64], pred: &[f64]) -> f64 {
    let n = y.len() as f64;
    let mean = y.iter().sum::<f64>() / n;
    let ss_tot: f64 = y.iter().map(|v| (v - mean) * (v - mean)).sum();
    let ss_res: f64 = y.iter().zip(pred).map(|(a, b)| (a - b) * (a - b)).sum();
    if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        f64::NAN
    }
}

/// K-fold cross-validation of [`least_squares`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrossValidation {
    pub folds: usize,
    /// Out-of-fold prediction of every observation.
    pub predictions: Vec<f64>,
    /// `1 - sum (y - out-of-fold prediction)^2 / SS_tot` over all observations.
    pub r2: f64,
}

/// K-fold cross-validated R^2: the observations are shuffled with `seed`
/// (observation `perm[t]` goes to fold `t mod k`); each fold is predicted by the
/// fit on the others.
pub fn cross_validate(x: &[Vec<f64>], y: &[f64], k: usize, seed: u64) -> Result<CrossValidation> {
    let n = y.len();
    if k < 2 || k > n {
        return Err(Error::InvalidArgument(format!(
            "cross-validation: {k} folds for {n} observations"
        )));
    }
    let perm = Rng::new(seed).permutation(n);
    let mut fold = vec![0; n];
    for (t, &i) in perm.iter().enumerate() {
        fold[i] = t % k;
    }
    let mut pred = vec![0.0; n];
    for f in 0..k {
        let (mut xt, mut yt) = (Vec::new(), Vec::new());
        for i in 0..n {
            if fold[i] != f {
                xt.push(x[i].clone());
                yt.push(y[i]);
            }
        }
        let fit = least_squares(&xt, &yt)?;
        for i in 0..n {
            if fold[i] == f {
                pred[i] = predict(&fit.coefficients, &x[i]);
            }
        }
    }
    let r2 = r_squared(y, &pred);
    Ok(CrossValidation {
        folds: k,
        predictions: pred,
        r2,
    })
}

/// Kendall's tau-b between `a` and `b`:
/// `(C - D) / sqrt((n0 - n1)(n0 - n2))` with `C`, `D` the concordant and
/// discordant pairs, `n0 = n(n-1)/2` and `n1`, `n2` the pairs tied in `a`, in
/// `b`. O(n^2); NaN when either variable is constant.
pub fn kendall_tau(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "kendall_tau: lengths differ");
    let n = a.len();
    let (mut c, mut d, mut ta, mut tb) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let sa = (a[i] - a[j]).partial_cmp(&0.0).map_or(0, |o| o as i64);
            let sb = (b[i] - b[j]).partial_cmp(&0.0).map_or(0, |o| o as i64);
            if sa == 0 {
                ta += 1;
            }
            if sb == 0 {
                tb += 1;
            }
            if sa != 0 && sb != 0 {
                if sa == sb {
                    c += 1;
                } else {
                    d += 1;
                }
            }
        }
    }
    let n0 = (n * n.saturating_sub(1) / 2) as i64;
    let den = (((n0 - ta) * (n0 - tb)) as f64).sqrt();
    if den > 0.0 {
        (c - d) as f64 / den
    } else {
        f64::NAN
    }
}
