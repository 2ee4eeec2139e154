//! Index maps of the spatial layers (convolution im2col, pooling windows,
//! flattening), on the engine's image layout.
//!
//! Layout: a batch of `n` images with `C` channels of `H x W` is an
//! `(n H W) x C` matrix (NHWC rows): element `(i, y, x, c)` sits at flat index
//! `((i H + y) W + x) C + c`. Input data arrive as PyTorch-flattened rows
//! `(i, c, y, x) -> i C H W + c H W + y W + x` (NCHW); [`nchw_to_nhwc`] converts.

use crate::autodiff::{IndexMap, NO_SOURCE};
use crate::tensor::{Matrix, Scalar};
use rayon::prelude::*;

/// Flat index of `(i, y, x, c)` in the NHWC layout.
#[inline]
fn nhwc(i: usize, y: usize, x: usize, c: usize, h: usize, w: usize, ch: usize) -> u32 {
    (((i * h + y) * w + x) * ch + c) as u32
}

/// Reorders PyTorch-flattened rows (`n x C H W`, NCHW) to the `(n H W) x C` layout.
pub fn nchw_to_nhwc<T: Scalar>(x: &Matrix<T>, c: usize, h: usize, w: usize) -> Matrix<T> {
    let n = x.rows();
    assert_eq!(x.cols(), c * h * w, "nchw_to_nhwc: row length");
    let mut out = Matrix::zeros(n * h * w, c);
    let dst = out.as_mut_slice();
    for i in 0..n {
        let row = x.row(i);
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    dst[nhwc(i, y, xx, ch, h, w, c) as usize] = row[(ch * h + y) * w + xx];
                }
            }
        }
    }
    out
}

/// im2col of a `k x k` convolution with stride `s` and zero padding `p`:
/// the `(n Ho Wo) x (C k k)` matrix whose row `(i, oy, ox)` holds, in column
/// order `(c, ky, kx)` (PyTorch's weight flatten), the input value at
/// `(i, oy s - p + ky, ox s - p + kx, c)`, or 0 outside the image.
///
/// Read as an `(n Ho Wo C) x (k k)` matrix (the same flat order), the map lists
/// each output's pooling window: average pooling uses it with `p = 0`.
#[allow(clippy::too_many_arguments)]
pub fn im2col_map(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    ho: usize,
    wo: usize,
) -> IndexMap {
    let cols = c * k * k;
    let mut idx = Vec::with_capacity(n * ho * wo * cols);
    for i in 0..n {
        for oy in 0..ho {
            for ox in 0..wo {
                for ch in 0..c {
                    for ky in 0..k {
                        let y = (oy * s + ky) as isize - p as isize;
                        for kx in 0..k {
                            let x = (ox * s + kx) as isize - p as isize;
                            if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                                idx.push(NO_SOURCE);
                            } else {
                                idx.push(nhwc(i, y as usize, x as usize, ch, h, w, c));
                            }
                        }
                    }
                }
            }
        }
    }
    IndexMap::new(n * h * w * c, idx)
}

/// Max pooling as a selection: the map sends each output `(i, oy, ox, c)` to
/// the position of its window's maximum in `values` (NHWC). Positions outside
/// the image (padding, or past the edge in ceil mode) never win. Ties take the
/// first maximum in row-major window order, as PyTorch's CPU kernel; a NaN wins
/// (and propagates), also as PyTorch.
#[allow(clippy::too_many_arguments)]
pub fn max_pool_map<T: Scalar>(
    values: &[T],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    ho: usize,
    wo: usize,
) -> IndexMap {
    let mut idx = vec![NO_SOURCE; n * ho * wo * c];
    if idx.is_empty() {
        return IndexMap::one_off(n * h * w * c, idx);
    }
    // One image per task: each output is decided by its own window alone, so
    // the split does not change the result.
    idx.par_chunks_mut(ho * wo * c)
        .enumerate()
        .for_each(|(i, out)| {
            let mut best_v = vec![T::ZERO; c];
            let mut best_i = vec![NO_SOURCE; c];
            for oy in 0..ho {
                let y0 = (oy * s) as isize - p as isize;
                let (ya, yb) = (
                    y0.max(0) as usize,
                    ((y0 + k as isize).min(h as isize)).max(0) as usize,
                );
                for ox in 0..wo {
                    let x0 = (ox * s) as isize - p as isize;
                    let (xa, xb) = (
                        x0.max(0) as usize,
                        ((x0 + k as isize).min(w as isize)).max(0) as usize,
                    );
                    best_i.fill(NO_SOURCE);
                    // Window positions in row-major order; all channels at once.
                    for y in ya..yb {
                        for x in xa..xb {
                            let base = nhwc(i, y, x, 0, h, w, c) as usize;
                            let row = &values[base..base + c];
                            for ch in 0..c {
                                let v = row[ch];
                                let take = best_i[ch] == NO_SOURCE
                                    || v > best_v[ch]
                                    || (v.to_f64().is_nan() && !best_v[ch].to_f64().is_nan());
                                if take {
                                    best_v[ch] = v;
                                    best_i[ch] = (base + ch) as u32;
                                }
                            }
                        }
                    }
                    let o = (oy * wo + ox) * c;
                    out[o..o + c].copy_from_slice(&best_i);
                }
            }
        });
    IndexMap::one_off(n * h * w * c, idx)
}

/// Global max pooling as a selection `n x C` (ties: the first position in
/// row-major order; NaN wins).
pub fn global_max_map<T: Scalar>(values: &[T], n: usize, c: usize, h: usize, w: usize) -> IndexMap {
    let k = h.max(w);
    max_pool_map(values, n, c, h, w, k, k, 0, 1, 1)
}

/// Flatten in PyTorch's order: row `i` of the `n x (C H W)` output holds
/// `(c, y, x)` at column `(c H + y) W + x`. Read as an `(n C) x (H W)` matrix,
/// the same map groups each image's channel into one row (global pooling).
pub fn flatten_map(n: usize, c: usize, h: usize, w: usize) -> IndexMap {
    let mut idx = Vec::with_capacity(n * c * h * w);
    for i in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    idx.push(nhwc(i, y, x, ch, h, w, c));
                }
            }
        }
    }
    IndexMap::new(n * h * w * c, idx)
}
