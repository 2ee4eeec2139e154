//! Hessian-norm bounds of "Unraveling the Hessian" (Kiselev and Grabovoy 2024),
//! as printed and as corrected (DESIGN.md section 4), and the model constants
//! they are stated in.
//!
//! Notation: `L` weight matrices, `K` classes, `M_W = max_p ||W(p)||_2` (exact
//! spectral norms), `M_x = max_i ||x_i||_2`, `M_l = max_i l_i`, `h` the largest
//! hidden width, `|w|max` the largest absolute weight.

pub mod lemma2;
pub mod validate;

use crate::error::{Error, Result};
use crate::hessian::small_eig::sym_eigenvalues;
use crate::nn::Mlp;
use crate::tensor::{matmul, Matrix};
use serde::{Deserialize, Serialize};

/// `sum_{j=0}^{L-1} MW^(2j) = (MW^(2L) - 1) / (MW^2 - 1)`, continuous at `MW = 1` (where it is `L`).
pub fn geometric_sum(mw: f64, l: usize) -> f64 {
    (0..l).map(|j| mw.powi(2 * j as i32)).sum()
}

/// Theorem 1 as printed: `L sqrt2 Mx^2 MW^(2L) + sqrt2 MW^2 (MW^(2L) - 1)/(MW^2 - 1)`.
pub fn theorem1_printed(l: usize, mx: f64, mw: f64) -> f64 {
    let s2 = std::f64::consts::SQRT_2;
    l as f64 * s2 * mx * mx * mw.powi(2 * l as i32) + s2 * mw * mw * geometric_sum(mw, l)
}

/// Lemma 1 as printed: Theorem 1 with `MW = h M`, `M = |w|max`.
pub fn lemma1_printed(l: usize, mx: f64, h: usize, w_abs_max: f64) -> f64 {
    theorem1_printed(l, mx, h as f64 * w_abs_max)
}

/// The thesis form: `sqrt2 L Mx^2 MW^(2L-2)`.
pub fn thesis_form(l: usize, mx: f64, mw: f64) -> f64 {
    std::f64::consts::SQRT_2 * l as f64 * mx * mx * mw.powi(2 * l as i32 - 2)
}

/// The tight Gauss-Newton bound `1/2 L Mx^2 MW^(2L-2)`, plus `1/2 (MW^(2L)-1)/(MW^2-1)`
/// for biases (at `b = 0`). It follows from `||GN_i|| <= ||A|| ||F_i||^2`, `||A|| <= 1/2`,
/// `||G(p)|| <= MW^(L-p)` and `||x(p)|| <= MW^(p-1) Mx` (ReLU, zero biases).
pub fn tight_form(l: usize, mx: f64, mw: f64, with_bias_term: bool) -> f64 {
    let base = 0.5 * l as f64 * mx * mx * mw.powi(2 * l as i32 - 2);
    if with_bias_term {
        base + 0.5 * geometric_sum(mw, l)
    } else {
        base
    }
}

/// Lemma 2 as printed: `|L_{k+1}(t) - L_k(t)| <= 2/(k+1) (M_l + Thm1 R^2)`.
pub fn lemma2_printed(k: usize, m_l: f64, thm1: f64, r: f64) -> f64 {
    2.0 / (k as f64 + 1.0) * (m_l + thm1 * r * r)
}

/// The sharper Lemma 2: `(M_l + 1/2 M_H R^2) / (k+1)` with `M_H` a bound on the per-sample Hessian norms.
pub fn lemma2_sharper(k: usize, m_l: f64, m_h: f64, r: f64) -> f64 {
    (m_l + 0.5 * m_h * r * r) / (k as f64 + 1.0)
}

/// Exact spectral norm of a matrix: `sqrt(lambda_max(W W^T))` on the smaller Gram matrix.
pub fn spectral_norm(w: &Matrix<f64>) -> f64 {
    let gram = if w.rows() <= w.cols() {
        matmul(w.view(), w.t())
    } else {
        matmul(w.t(), w.view())
    };
    sym_eigenvalues(&gram)
        .last()
        .copied()
        .unwrap_or(0.0)
        .max(0.0)
        .sqrt()
}

/// The constants the bounds are stated in.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Constants {
    /// `||W(p)||_2` for every layer.
    pub weight_norms: Vec<f64>,
    /// `M_W = max_p ||W(p)||_2`.
    pub m_w: f64,
    /// `M_x = max_i ||x_i||_2`.
    pub m_x: f64,
    /// `M_l = max_i l_i` (filled in by the caller from per-sample losses).
    pub m_l: f64,
    /// Largest hidden width (the input width when there is no hidden layer).
    pub h: usize,
    /// `|w|max`.
    pub w_abs_max: f64,
    /// Number of weight matrices `L`.
    pub layers: usize,
    pub classes: usize,
    pub bias: bool,
    /// Largest absolute bias entry (the corrected bias term assumes `b = 0`).
    pub b_abs_max: f64,
}

impl Constants {
    /// Constants of `model` on inputs `x` with per-sample losses `losses`.
    pub fn of(model: &Mlp<f64>, x: &Matrix<f64>, losses: &[f64]) -> Result<Self> {
        if x.rows() == 0 {
            return Err(Error::InvalidArgument("no samples".into()));
        }
        let weight_norms: Vec<f64> = model
            .layers
            .iter()
            .map(|l| spectral_norm(&l.weight))
            .collect();
        let m_w = weight_norms.iter().copied().fold(0.0, f64::max);
        let m_x = (0..x.rows())
            .map(|i| x.row(i).iter().map(|v| v * v).sum::<f64>().sqrt())
            .fold(0.0, f64::max);
        let w_abs_max = model
            .layers
            .iter()
            .map(|l| l.weight.max_abs())
            .fold(0.0, f64::max);
        let b_abs_max = model
            .layers
            .iter()
            .filter_map(|l| l.bias.as_ref().map(|b| b.max_abs()))
            .fold(0.0, f64::max);
        let widths = model.config.widths();
        let h = if model.config.hidden.is_empty() {
            widths[0]
        } else {
            *model.config.hidden.iter().max().expect("hidden layers")
        };
        Ok(Self {
            weight_norms,
            m_w,
            m_x,
            m_l: losses.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            h,
            w_abs_max,
            layers: model.num_layers(),
            classes: model.config.classes,
            bias: model.config.bias,
            b_abs_max,
        })
    }
}

/// One bound variant evaluated on the model's constants.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoundValue {
    pub name: String,
    pub formula: String,
    pub value: f64,
}

/// Every per-sample Hessian-norm bound variant for the given constants.
pub fn bound_variants(c: &Constants) -> Vec<BoundValue> {
    let l = c.layers;
    let mut v = vec![
        BoundValue {
            name: "theorem1_printed".into(),
            formula: "L sqrt2 Mx^2 MW^(2L) + sqrt2 MW^2 (MW^(2L)-1)/(MW^2-1)".into(),
            value: theorem1_printed(l, c.m_x, c.m_w),
        },
        BoundValue {
            name: "lemma1_printed".into(),
            formula: "Theorem 1 with MW = h |w|max".into(),
            value: lemma1_printed(l, c.m_x, c.h, c.w_abs_max),
        },
        BoundValue {
            name: "thesis".into(),
            formula: "sqrt2 L Mx^2 MW^(2L-2)".into(),
            value: thesis_form(l, c.m_x, c.m_w),
        },
        BoundValue {
            name: "tight".into(),
            formula: "1/2 L Mx^2 MW^(2L-2)".into(),
            value: tight_form(l, c.m_x, c.m_w, false),
        },
    ];
    if c.bias {
        v.push(BoundValue {
            name: "tight_with_bias".into(),
            formula: "1/2 L Mx^2 MW^(2L-2) + 1/2 (MW^(2L)-1)/(MW^2-1)".into(),
            value: tight_form(l, c.m_x, c.m_w, true),
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_theorem_on_the_single_layer_counterexample() {
        // L = 1, MW = 0.1, Mx = sqrt2: 1 * sqrt2 * 2 * 0.01 + sqrt2 * 0.01 * 1 = 0.0424.
        let v = theorem1_printed(1, 2f64.sqrt(), 0.1);
        assert!((v - 3.0 * 2f64.sqrt() * 0.01).abs() < 1e-15);
    }

    #[test]
    fn geometric_sum_is_continuous_at_one() {
        assert_eq!(geometric_sum(1.0, 4), 4.0);
        let mw: f64 = 1.3;
        let closed = (mw.powi(8) - 1.0) / (mw * mw - 1.0);
        assert!((geometric_sum(mw, 4) - closed).abs() < 1e-12);
    }

    #[test]
    fn spectral_norm_closed_forms() {
        let w = Matrix::from_vec(2, 3, vec![3.0, 0.0, 0.0, 0.0, -4.0, 0.0]);
        assert!((spectral_norm(&w) - 4.0).abs() < 1e-14);
        // Rank one: ||u v^T|| = ||u|| ||v||.
        let u = [1.0, 2.0, 2.0];
        let v = [3.0, 4.0];
        let r = Matrix::from_fn(3, 2, |i, j| u[i] * v[j]);
        assert!((spectral_norm(&r) - 15.0).abs() < 1e-13);
    }
}
