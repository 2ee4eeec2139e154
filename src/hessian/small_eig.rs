//! Eigenvalues of small symmetric matrices (the per-sample `K x K` problems) by
//! the cyclic Jacobi method: accurate to a few ulps of `||A||`, deterministic.

use crate::tensor::Matrix;

/// Eigenvalues (ascending) of a symmetric matrix; only the upper triangle is read.
pub fn jacobi_eigenvalues(a: &Matrix<f64>) -> Vec<f64> {
    let n = a.rows();
    assert_eq!(n, a.cols(), "jacobi_eigenvalues: square matrix required");
    let mut m = Matrix::from_fn(n, n, |i, j| if i <= j { a.get(i, j) } else { a.get(j, i) });
    let norm = m.frobenius_norm();
    for _sweep in 0..64 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m.get(i, j).powi(2))
            .sum::<f64>()
            .sqrt();
        if off <= 1e-17 * norm || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m.get(p, q);
                if apq == 0.0 {
                    continue;
                }
                let theta = (m.get(q, q) - m.get(p, p)) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m.get(k, p), m.get(k, q));
                    m.set(k, p, c * mkp - s * mkq);
                    m.set(k, q, s * mkp + c * mkq);
                }
                for k in 0..n {
                    let (mpk, mqk) = (m.get(p, k), m.get(q, k));
                    m.set(p, k, c * mpk - s * mqk);
                    m.set(q, k, s * mpk + c * mqk);
                }
            }
        }
    }
    let mut ev: Vec<f64> = (0..n).map(|i| m.get(i, i)).collect();
    ev.sort_by(|a, b| a.total_cmp(b));
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_on_known_spectra() {
        // [[2, 1], [1, 2]] has eigenvalues 1 and 3.
        let a = Matrix::from_vec(2, 2, vec![2.0, 1.0, 1.0, 2.0]);
        let ev = jacobi_eigenvalues(&a);
        assert!((ev[0] - 1.0).abs() < 1e-15 && (ev[1] - 3.0).abs() < 1e-15);
        // Tridiagonal (2, -1): eigenvalues 2 - 2 cos(k pi / (n + 1)).
        let n = 9;
        let t = Matrix::from_fn(n, n, |i, j| match i.abs_diff(j) {
            0 => 2.0,
            1 => -1.0,
            _ => 0.0,
        });
        let ev = jacobi_eigenvalues(&t);
        for (k, e) in ev.iter().enumerate() {
            let exact = 2.0 - 2.0 * ((k + 1) as f64 * std::f64::consts::PI / (n + 1) as f64).cos();
            assert!((e - exact).abs() < 1e-14, "{e} vs {exact}");
        }
    }
}
