//! Fixed linear index maps: the gathers behind im2col, pooling selections and
//! layout permutations, and their adjoint scatter-adds.
//!
//! A map sends output element `j` to source element `map[j]` (or to nothing,
//! which reads as 0: zero padding). `gather` is `out[j] = src[map[j]]`; its
//! adjoint `scatter_add` is `src_grad[s] = sum_{j: map[j] = s} g[j]`, computed
//! through the inverse map (a CSR list of the `j` reading each `s`, in
//! increasing `j`) so that each slot is summed by one thread in a fixed order:
//! results are bit-identical for any thread count.

use crate::tensor::Scalar;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Marks an output element with no source (it reads as 0).
pub const NO_SOURCE: u32 = u32::MAX;

/// Below this many elements a gather runs on the calling thread.
const PARALLEL_MIN: usize = 1 << 16;

/// A linear map by indices from a source of `src_len` elements to `len()` outputs.
#[derive(Debug)]
pub struct IndexMap {
    src_len: usize,
    idx: Vec<u32>,
    /// Maps used many times (cached im2col maps) build an inverse for a parallel
    /// scatter-add; one-off maps (max-pool selections) scatter sequentially.
    reusable: bool,
    inverse: OnceLock<Inverse>,
}

/// For each source slot `s`, the outputs `pos[off[s]..off[s+1]]` that read it.
#[derive(Debug)]
struct Inverse {
    off: Vec<u32>,
    pos: Vec<u32>,
}

impl IndexMap {
    /// A map with `idx[j]` the source of output `j` (or [`NO_SOURCE`]).
    ///
    /// Panics if an index is out of range or the sizes exceed `u32`: maps are
    /// built by the engine from validated shapes, so this is a programming error.
    pub fn new(src_len: usize, idx: Vec<u32>) -> Self {
        assert!(
            src_len < NO_SOURCE as usize && idx.len() < NO_SOURCE as usize,
            "index map too large ({} outputs from {src_len}): process fewer samples at once",
            idx.len()
        );
        debug_assert!(idx
            .iter()
            .all(|&s| s == NO_SOURCE || (s as usize) < src_len));
        Self {
            src_len,
            idx,
            reusable: true,
            inverse: OnceLock::new(),
        }
    }

    /// A map used once or twice (a data-dependent selection): its scatter-add
    /// runs sequentially instead of building an inverse.
    pub fn one_off(src_len: usize, idx: Vec<u32>) -> Self {
        Self {
            reusable: false,
            ..Self::new(src_len, idx)
        }
    }

    /// Number of outputs.
    pub fn len(&self) -> usize {
        self.idx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.idx.is_empty()
    }

    /// Number of source elements.
    pub fn src_len(&self) -> usize {
        self.src_len
    }

    /// The source of each output.
    pub fn indices(&self) -> &[u32] {
        &self.idx
    }

    /// `out[j] = src[map[j]]`.
    pub fn gather<T: Scalar>(&self, src: &[T]) -> Vec<T> {
        assert_eq!(src.len(), self.src_len, "gather: source length");
        let read = |&s: &u32| {
            if s == NO_SOURCE {
                T::ZERO
            } else {
                src[s as usize]
            }
        };
        if self.idx.len() >= PARALLEL_MIN {
            self.idx.par_iter().with_min_len(4096).map(read).collect()
        } else {
            self.idx.iter().map(read).collect()
        }
    }

    fn inverse(&self) -> &Inverse {
        self.inverse.get_or_init(|| {
            let mut count = vec![0u32; self.src_len + 1];
            for &s in &self.idx {
                if s != NO_SOURCE {
                    count[s as usize + 1] += 1;
                }
            }
            for i in 0..self.src_len {
                count[i + 1] += count[i];
            }
            let off = count;
            let mut fill = off.clone();
            let mut pos = vec![0u32; off[self.src_len] as usize];
            for (j, &s) in self.idx.iter().enumerate() {
                if s != NO_SOURCE {
                    let f = &mut fill[s as usize];
                    pos[*f as usize] = j as u32;
                    *f += 1;
                }
            }
            Inverse { off, pos }
        })
    }

    /// `out[s] = sum_{j: map[j] = s} g[j]`, summed in increasing `j`.
    pub fn scatter_add<T: Scalar>(&self, g: &[T]) -> Vec<T> {
        assert_eq!(g.len(), self.idx.len(), "scatter_add: input length");
        if !self.reusable || self.src_len < PARALLEL_MIN {
            // Increasing j per slot, the same order as the inverse route.
            let mut out = vec![T::ZERO; self.src_len];
            for (&s, &v) in self.idx.iter().zip(g) {
                if s != NO_SOURCE {
                    out[s as usize] += v;
                }
            }
            return out;
        }
        let inv = self.inverse();
        let mut out = vec![T::ZERO; self.src_len];
        let body = |(s, o): (usize, &mut T)| {
            let (a, b) = (inv.off[s] as usize, inv.off[s + 1] as usize);
            let mut acc = T::ZERO;
            for &j in &inv.pos[a..b] {
                acc += g[j as usize];
            }
            *o = acc;
        };
        if self.src_len >= PARALLEL_MIN {
            out.par_iter_mut()
                .with_min_len(4096)
                .enumerate()
                .for_each(body);
        } else {
            out.iter_mut().enumerate().for_each(body);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_add_is_the_adjoint_of_gather() {
        // <gather(x), g> = <x, scatter_add(g)> for a map with repeats and holes.
        let idx = vec![0, 2, NO_SOURCE, 2, 1, 0, NO_SOURCE, 3];
        let map = IndexMap::new(4, idx);
        let x = [1.5, -2.0, 0.25, 3.0];
        let g = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8];
        let gx = map.gather(&x);
        assert_eq!(gx, vec![1.5, 0.25, 0.0, 0.25, -2.0, 1.5, 0.0, 3.0]);
        let sg = map.scatter_add(&g);
        assert_eq!(sg, vec![0.1 + 0.6, 0.5, 0.2 + 0.4, 0.8]);
        let lhs: f64 = gx.iter().zip(&g).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&sg).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-15);
    }
}
