//! Eigenvalues of small symmetric matrices (the per-sample `K x K` problems).
//!
//! [`sym_eigenvalues`]: Householder reduction to tridiagonal form, then the
//! implicit QL algorithm with Wilkinson-type shifts (eigenvalues only, `O(n^3)`
//! with a small constant): the fast path for millions of `K x K` problems.
//! [`jacobi_eigenvalues`]: the cyclic Jacobi method, slower but independent and
//! accurate to a few ulps of `||A||`; used as a cross-check.
#![allow(clippy::needless_range_loop)] // index loops mirror the formulas above

use crate::tensor::Matrix;

/// Eigenvalues (ascending) of a symmetric `n x n` matrix given row-major in `a`
/// (only the lower triangle is read; `a` is used as scratch).
pub fn sym_eigenvalues_in_place(a: &mut [f64], n: usize) -> Vec<f64> {
    assert_eq!(a.len(), n * n);
    // Householder: zero column k below the subdiagonal, for k = 0..n-2.
    let mut v = vec![0.0; n];
    let mut w = vec![0.0; n];
    for k in 0..n.saturating_sub(2) {
        let norm: f64 = (k + 1..n).map(|i| a[i * n + k].powi(2)).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        let x0 = a[(k + 1) * n + k];
        let alpha = if x0 > 0.0 { -norm } else { norm };
        for i in k + 1..n {
            v[i] = a[i * n + k];
        }
        v[k + 1] -= alpha;
        let vn: f64 = (k + 1..n).map(|i| v[i] * v[i]).sum::<f64>().sqrt();
        if vn == 0.0 {
            continue;
        }
        for i in k + 1..n {
            v[i] /= vn;
        }
        // p = A v on the trailing block (symmetric: read the lower triangle).
        for i in k + 1..n {
            let mut s = 0.0;
            for j in k + 1..n {
                let aij = if i >= j { a[i * n + j] } else { a[j * n + i] };
                s += aij * v[j];
            }
            w[i] = s;
        }
        let vp: f64 = (k + 1..n).map(|i| v[i] * w[i]).sum();
        for i in k + 1..n {
            w[i] -= vp * v[i];
        }
        // A <- A - 2 v w^T - 2 w v^T (lower triangle).
        for i in k + 1..n {
            for j in k + 1..=i {
                a[i * n + j] -= 2.0 * (v[i] * w[j] + w[i] * v[j]);
            }
        }
        a[(k + 1) * n + k] = alpha;
        for i in k + 2..n {
            a[i * n + k] = 0.0;
        }
    }
    let mut d: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();
    let mut e: Vec<f64> = (0..n)
        .map(|i| if i + 1 < n { a[(i + 1) * n + i] } else { 0.0 })
        .collect();
    crate::linalg::tridiagonal_ql(&mut d, &mut e, None);
    d.sort_by(|x, y| x.total_cmp(y));
    d
}

/// Eigenvalues (ascending) of a symmetric matrix (fast path, see module docs).
pub fn sym_eigenvalues(a: &Matrix<f64>) -> Vec<f64> {
    assert_eq!(
        a.rows(),
        a.cols(),
        "sym_eigenvalues: square matrix required"
    );
    let mut scratch = a.as_slice().to_vec();
    sym_eigenvalues_in_place(&mut scratch, a.rows())
}

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
    fn householder_ql_matches_jacobi() {
        let mut rng = crate::rng::Rng::new(5);
        for n in [1usize, 2, 3, 7, 10, 31] {
            let b = Matrix::from_fn(n, n, |_, _| rng.normal());
            let a = Matrix::from_fn(n, n, |i, j| b.get(i, j) + b.get(j, i));
            let x = sym_eigenvalues(&a);
            let y = jacobi_eigenvalues(&a);
            let scale = a.frobenius_norm();
            for (u, v) in x.iter().zip(&y) {
                assert!((u - v).abs() <= 1e-13 * scale, "n={n}: {u} vs {v}");
            }
        }
        // Repeated eigenvalues and a zero matrix.
        let ev = sym_eigenvalues(&Matrix::identity(5));
        assert!(ev.iter().all(|&e| (e - 1.0).abs() < 1e-15));
        assert!(sym_eigenvalues(&Matrix::<f64>::zeros(4, 4))
            .iter()
            .all(|&e| e == 0.0));
    }

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
