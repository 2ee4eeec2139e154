//! Losses on logits `z` (one row per sample), averaged over samples.
//!
//! * Cross-entropy on softmax: `l = logsumexp(z) - z_y`; `r = dl/dz = p - onehot(y)`,
//!   `A = d2l/dz2 = diag(p) - p p^T`.
//! * MSE: `l = sum_k (z_k - onehot_k)^2`; `r = 2 (z - onehot)`, `A = 2 I`.

use crate::tensor::{Matrix, Scalar};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    #[serde(rename = "ce")]
    #[value(name = "ce")]
    CrossEntropy,
    Mse,
}

impl LossKind {
    pub fn name(self) -> &'static str {
        match self {
            LossKind::CrossEntropy => "ce",
            LossKind::Mse => "mse",
        }
    }
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "ce" | "cross_entropy" | "crossentropy" => Some(LossKind::CrossEntropy),
            "mse" => Some(LossKind::Mse),
            _ => None,
        }
    }

    /// Per-sample losses of logits `z` (`n x K`) against integer labels.
    pub fn per_sample<T: Scalar>(self, z: &Matrix<T>, labels: &[usize]) -> Vec<f64> {
        assert_eq!(z.rows(), labels.len());
        (0..z.rows())
            .map(|i| {
                let row = z.row(i);
                let y = labels[i];
                match self {
                    LossKind::CrossEntropy => {
                        let m = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.to_f64()));
                        let s: f64 = row.iter().map(|v| (v.to_f64() - m).exp()).sum();
                        m + s.ln() - row[y].to_f64()
                    }
                    LossKind::Mse => row
                        .iter()
                        .enumerate()
                        .map(|(k, v)| {
                            let t = if k == y { 1.0 } else { 0.0 };
                            (v.to_f64() - t).powi(2)
                        })
                        .sum(),
                }
            })
            .collect()
    }

    /// Mean loss over the rows of `z`.
    pub fn mean<T: Scalar>(self, z: &Matrix<T>, labels: &[usize]) -> f64 {
        let v = self.per_sample(z, labels);
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }
}

/// Predicted class (first maximal logit) of each row.
pub fn argmax_rows<T: Scalar>(z: &Matrix<T>) -> Vec<usize> {
    (0..z.rows())
        .map(|i| {
            let row = z.row(i);
            let mut best = 0;
            for k in 1..row.len() {
                if row[k] > row[best] {
                    best = k;
                }
            }
            best
        })
        .collect()
}

/// Fraction of rows whose argmax differs from the label.
pub fn error_rate<T: Scalar>(z: &Matrix<T>, labels: &[usize]) -> f64 {
    let pred = argmax_rows(z);
    let wrong = pred.iter().zip(labels).filter(|(p, y)| p != y).count();
    wrong as f64 / labels.len().max(1) as f64
}
