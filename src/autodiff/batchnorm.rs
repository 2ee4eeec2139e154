//! Fused kernels of training-mode BatchNorm on the tape ([`super::Var::bn_normalize`]).
//!
//! Per column `j` of an `n x d` matrix `x` (rows are samples or NHWC pixels, columns
//! channels): `mean_j = (1/n) sum_i x_ij`, the biased variance
//! `var_j = (1/n) sum_i (x_ij - mean_j)^2`, `s_j = 1 / sqrt(var_j + eps)` and
//! `xhat_ij = (x_ij - mean_j) s_j`. The backward map of a cotangent `g` is
//! `B(g)_ij = s_j (g_ij - mean_i(g_.j) - xhat_ij mean_i(g_.j xhat_.j))`.
//!
//! Column sums run over fixed blocks of rows, each block in row order, the block
//! sums added in block order, in f64 whatever `T`: the results do not depend on the
//! thread count.

use crate::tensor::{Matrix, Scalar};
use rayon::prelude::*;

/// Rows per block of the column sums.
const BLOCK_ROWS: usize = 1024;

/// The column statistics of a normalisation: `mean`, biased `var`, `inv_std = s`.
#[derive(Clone, Debug)]
pub struct BnStats<T> {
    pub mean: Vec<T>,
    pub var: Vec<T>,
    pub inv_std: Vec<T>,
}

/// `K` sums per column over the rows, as described in the module documentation:
/// `add(i, acc)` adds row `i`'s terms into the `K` accumulator rows of length `d`.
fn column_sums<const K: usize>(
    n: usize,
    d: usize,
    add: impl Fn(usize, &mut [Vec<f64>; K]) + Sync,
) -> [Vec<f64>; K] {
    let blocks: Vec<[Vec<f64>; K]> = (0..n.div_ceil(BLOCK_ROWS))
        .into_par_iter()
        .map(|b| {
            let mut acc: [Vec<f64>; K] = std::array::from_fn(|_| vec![0.0f64; d]);
            for i in b * BLOCK_ROWS..((b + 1) * BLOCK_ROWS).min(n) {
                add(i, &mut acc);
            }
            acc
        })
        .collect();
    let mut total: [Vec<f64>; K] = std::array::from_fn(|_| vec![0.0f64; d]);
    for b in blocks {
        for (t, v) in total.iter_mut().zip(b) {
            for (a, x) in t.iter_mut().zip(v) {
                *a += x;
            }
        }
    }
    total
}

/// `xhat` and the statistics of `x` (module documentation).
pub fn normalize<T: Scalar>(x: &Matrix<T>, eps: f64) -> (Matrix<T>, BnStats<T>) {
    let (n, d) = x.shape();
    assert!(n > 0, "batchnorm: no rows");
    let xs = x.as_slice();
    let inv_n = 1.0 / n as f64;
    let [sums] = column_sums(n, d, |i, [acc]| {
        for (a, x) in acc.iter_mut().zip(&xs[i * d..(i + 1) * d]) {
            *a += x.to_f64();
        }
    });
    let mean_t: Vec<T> = sums.iter().map(|s| T::from_f64(s * inv_n)).collect();
    // Two passes (centred squares), as the unfused graph computes the variance.
    let [squares] = column_sums(n, d, |i, [acc]| {
        for ((a, &x), &m) in acc.iter_mut().zip(&xs[i * d..(i + 1) * d]).zip(&mean_t) {
            let c = (x - m).to_f64();
            *a += c * c;
        }
    });
    let var: Vec<f64> = squares.iter().map(|s| s * inv_n).collect();
    let inv_std: Vec<T> = var
        .iter()
        .map(|&v| T::from_f64(1.0 / (v + eps).sqrt()))
        .collect();
    let mut out: Vec<T> = Vec::with_capacity(n * d);
    out.spare_capacity_mut()[..n * d]
        .par_chunks_mut(BLOCK_ROWS * d.max(1))
        .zip(xs.par_chunks(BLOCK_ROWS * d.max(1)))
        .for_each(|(o, src)| {
            for (orow, xrow) in o.chunks_exact_mut(d).zip(src.chunks_exact(d)) {
                for (((ov, &xv), &m), &s) in orow.iter_mut().zip(xrow).zip(&mean_t).zip(&inv_std) {
                    ov.write((xv - m) * s);
                }
            }
        });
    // SAFETY: all n d slots were written above.
    unsafe { out.set_len(n * d) };
    let stats = BnStats {
        mean: mean_t,
        var: var.iter().map(|&v| T::from_f64(v)).collect(),
        inv_std,
    };
    (Matrix::from_vec(n, d, out), stats)
}

/// `B(g)` for the normalised `xhat` and its `inv_std` (module documentation).
pub fn backward<T: Scalar>(xhat: &Matrix<T>, g: &Matrix<T>, inv_std: &[T]) -> Matrix<T> {
    let (n, d) = xhat.shape();
    assert_eq!(g.shape(), (n, d), "batchnorm backward: shapes differ");
    let (ys, gs) = (xhat.as_slice(), g.as_slice());
    let inv_n = 1.0 / n as f64;
    let [g_sums, gy_sums] = column_sums(n, d, |i, [ag, agy]| {
        let (gr, yr) = (&gs[i * d..(i + 1) * d], &ys[i * d..(i + 1) * d]);
        for (((a, b), &gv), &yv) in ag.iter_mut().zip(agy.iter_mut()).zip(gr).zip(yr) {
            let g64 = gv.to_f64();
            *a += g64;
            *b += g64 * yv.to_f64();
        }
    });
    let g_mean: Vec<T> = g_sums.iter().map(|s| T::from_f64(s * inv_n)).collect();
    let gy_mean: Vec<T> = gy_sums.iter().map(|s| T::from_f64(s * inv_n)).collect();
    let mut out: Vec<T> = Vec::with_capacity(n * d);
    out.spare_capacity_mut()[..n * d]
        .par_chunks_mut(BLOCK_ROWS * d.max(1))
        .zip(gs.par_chunks(BLOCK_ROWS * d.max(1)))
        .zip(ys.par_chunks(BLOCK_ROWS * d.max(1)))
        .for_each(|((o, gsrc), ysrc)| {
            for ((orow, grow), yrow) in o
                .chunks_exact_mut(d)
                .zip(gsrc.chunks_exact(d))
                .zip(ysrc.chunks_exact(d))
            {
                for ((((o, &gv), &yv), (&gm, &gym)), &st) in orow
                    .iter_mut()
                    .zip(grow)
                    .zip(yrow)
                    .zip(g_mean.iter().zip(&gy_mean))
                    .zip(inv_std)
                {
                    o.write(st * (gv - gm - yv * gym));
                }
            }
        });
    // SAFETY: all n d slots were written above.
    unsafe { out.set_len(n * d) };
    Matrix::from_vec(n, d, out)
}
