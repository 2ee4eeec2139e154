//! Eigen-decomposition of a symmetric tridiagonal matrix by the implicit QL
//! method with shifts, accumulating the rotations (eigenvectors).

use crate::tensor::Matrix;

/// Implicit QL with shifts on the symmetric tridiagonal matrix with diagonal `d`
/// and off-diagonal `e` (`e[i]` couples `d[i]` and `d[i+1]`; `e` has `n` entries,
/// the last ignored). Eigenvalues end in `d` (unsorted); when `z` is given
/// (start from the identity), the rotations are accumulated into its columns.
pub fn tridiagonal_ql(d: &mut [f64], e: &mut [f64], mut z: Option<&mut Matrix<f64>>) {
    let n = d.len();
    for l in 0..n {
        let mut iter = 0;
        loop {
            let mut m = l;
            while m + 1 < n {
                let dd = d[m].abs() + d[m + 1].abs();
                if e[m].abs() + dd == dd {
                    break;
                }
                m += 1;
            }
            if m == l || iter > 200 {
                break;
            }
            iter += 1;
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            // sqrt(x^2 + y^2) rather than libm's overflow-safe hypot: the entries here are
            // far from 1e154, and hypot dominated the per-sample K x K cost.
            let mut r = (g * g + 1.0).sqrt();
            g = d[m] - d[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut deflated = false;
            let mut i = m;
            while i > l {
                i -= 1;
                let f = s * e[i];
                let b = c * e[i];
                r = (f * f + g * g).sqrt();
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    deflated = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
                if let Some(z) = z.as_deref_mut() {
                    for k in 0..n {
                        let f = z.get(k, i + 1);
                        let zi = z.get(k, i);
                        z.set(k, i + 1, s * zi + c * f);
                        z.set(k, i, c * zi - s * f);
                    }
                }
            }
            if deflated {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
}

/// Eigenvalues (ascending) and eigenvectors (columns, same order) of the
/// symmetric tridiagonal matrix with diagonal `alpha` and off-diagonal `beta`
/// (`beta[i]` couples `alpha[i]` and `alpha[i+1]`; `beta.len() == alpha.len() - 1`).
pub fn tridiagonal_eigen(alpha: &[f64], beta: &[f64]) -> (Vec<f64>, Matrix<f64>) {
    let n = alpha.len();
    assert_eq!(
        beta.len() + 1,
        n.max(1),
        "tridiagonal_eigen: need n - 1 off-diagonal entries"
    );
    let mut d = alpha.to_vec();
    let mut e: Vec<f64> = beta.iter().copied().chain(std::iter::once(0.0)).collect();
    let mut z = Matrix::identity(n);
    tridiagonal_ql(&mut d, &mut e, Some(&mut z));
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| d[a].total_cmp(&d[b]));
    let vals = order.iter().map(|&i| d[i]).collect();
    let vecs = Matrix::from_fn(n, n, |r, c| z.get(r, order[c]));
    (vals, vecs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn second_difference_matrix() {
        // tridiag(-1, 2, -1): eigenvalues 2 - 2 cos(k pi / (n+1)), eigenvectors sin(j k pi / (n+1)).
        let n = 12;
        let (vals, vecs) = tridiagonal_eigen(&vec![2.0; n], &vec![-1.0; n - 1]);
        for k in 0..n {
            let theta = (k + 1) as f64 * std::f64::consts::PI / (n + 1) as f64;
            assert!((vals[k] - (2.0 - 2.0 * theta.cos())).abs() < 1e-13);
            let scale = vecs.get(0, k) / theta.sin();
            for j in 0..n {
                assert!((vecs.get(j, k) - scale * ((j + 1) as f64 * theta).sin()).abs() < 1e-12);
            }
        }
        let (v1, z1) = tridiagonal_eigen(&[3.5], &[]);
        assert_eq!((v1[0], z1.get(0, 0)), (3.5, 1.0));
    }
}
