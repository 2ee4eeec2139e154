//! Dense Hessian assembly, block by block, as large GEMMs over the sample index.
//!
//! With `x~(p) = [x(p); 1]` when biases are present (so the augmented weight
//! `[W(p) | b(p)]` holds all of layer `p`'s parameters), the mean Hessian over
//! `m` samples splits into
//!
//! * the **curvature blocks** `(q, p)`, `q <= p`:
//!   `(1/m) sum_i M_i(q,p) (x) x~_i(q) x~_i(p)^T`, where
//!   `M_i(q,p) = G_i(q)^T A_i G_i(p)` (Gauss-Newton) `+ sum_{s >= p, s < L-1} G_{s,i}(q)^T diag(c_{s,i}) G_{s,i}(p)`
//!   (the smooth-activation term: `G_s(t) = dz(s)/dz(t)`, `c_s = act''(z(s)) .* dl/dx(s+1)`);
//!   computed as `Mstack^T Xstack`, a GEMM `(d_q d_p x m) (m x n~_q n~_p)`
//!   (on a diagonal block `q = p`, which is symmetric, only the `n~_p (n~_p + 1) / 2`
//!   input pairs `b <= e`);
//! * the **cross blocks** of the H-term, `(W(q), theta(p))` for `p < q`:
//!   `(1/m) sum_i delta_i(q)[a] B_i(q,p)[b,c] x~_i(p)[e]` at
//!   `(W(q)[a,b], [W(p)|b(p)][c,e])`, a GEMM `(d_q n~_p x m) (m x n_q d_p)`;
//!   rows of `b(q)` are zero.
//!
//! The GEMM results come out in a "pair" layout and are scattered to the
//! parameter order `[vec(W0), b0, ...]`. Samples are processed in fixed chunks
//! of [`SAMPLE_CHUNK`], accumulated in order, so results are reproducible.

use super::structure::{check_model, loss_derivatives, BatchStructure, ParamLayout};
use crate::error::{Error, Result};
use crate::nn::Mlp;
use crate::tensor::{gemm, matmul, Matrix, Par};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Samples per chunk in the dense assembly.
pub const SAMPLE_CHUNK: usize = 1024;

/// Which part of the Hessian: `H = GN + Hterm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Full,
    /// Gauss-Newton `F^T A F`.
    Gn,
    /// `Hterm = H - GN`: cross-layer blocks plus the smooth-activation term.
    Hterm,
}

impl Part {
    fn gn(self) -> bool {
        matches!(self, Part::Full | Part::Gn)
    }
    fn hterm(self) -> bool {
        matches!(self, Part::Full | Part::Hterm)
    }
}

/// Bytes the dense assembly needs for `P` parameters (output plus the largest block scratch).
pub fn dense_bytes(layout: &ParamLayout) -> usize {
    let p = layout.total;
    let max_block = (0..layout.num_layers())
        .map(|l| layout.layer_size(l))
        .max()
        .unwrap_or(0);
    8 * (p * p + 2 * max_block * max_block)
}

/// Precomputed per-chunk structure for one model and dataset.
struct Context<'a> {
    model: &'a Mlp<f64>,
    layout: ParamLayout,
    chunks: Vec<(BatchStructure, Vec<usize>)>,
    m_total: usize,
}

impl<'a> Context<'a> {
    fn new(model: &'a Mlp<f64>, x: &Matrix<f64>, labels: &[usize]) -> Result<Self> {
        check_model(model)?;
        if x.rows() == 0 {
            return Err(Error::InvalidArgument(
                "no samples: the Hessian of an empty subset is undefined".into(),
            ));
        }
        let mut chunks = Vec::new();
        for start in (0..x.rows()).step_by(SAMPLE_CHUNK) {
            let end = (start + SAMPLE_CHUNK).min(x.rows());
            let xc = x.rows_view(start, end).to_owned();
            let yc = labels[start..end].to_vec();
            chunks.push((BatchStructure::from_owned(model, xc, &yc, Par::Rayon)?, yc));
        }
        Ok(Self {
            model,
            layout: ParamLayout::of(model),
            chunks,
            m_total: x.rows(),
        })
    }
}

/// `dz(s)/dz(t)` for `t <= s` of one sample (`d_s x d_t`), all `t` at once (index `t`).
fn partial_g(model: &Mlp<f64>, st: &BatchStructure, s: usize, i: usize) -> Vec<Matrix<f64>> {
    let mut out = vec![Matrix::zeros(0, 0); s + 1];
    out[s] = Matrix::identity(st.widths[s + 1]);
    for t in (0..s).rev() {
        let mut next = matmul(out[t + 1].view(), model.layers[t + 1].weight.view());
        let d = st.dact[t].row(i);
        for r in 0..next.rows() {
            for (v, &dv) in next.row_mut(r).iter_mut().zip(d) {
                *v *= dv;
            }
        }
        out[t] = next;
    }
    out
}

/// `M_i(q, p)` (`d_q x d_p`) for one sample: Gauss-Newton and/or smooth-activation parts.
fn curvature_core(
    ctx: &Context,
    st: &BatchStructure,
    labels: &[usize],
    part: Part,
    q: usize,
    p: usize,
    i: usize,
) -> Matrix<f64> {
    let model = ctx.model;
    let nl = st.num_layers();
    let mut m = Matrix::zeros(st.widths[q + 1], st.widths[p + 1]);
    if part.gn() {
        let (_, a) = loss_derivatives(model.config.loss, st.logits(i), labels[i]);
        let ag = matmul(a.view(), st.g_of(p, i).view());
        m = matmul(st.g_of(q, i).t(), ag.view());
    }
    if part.hterm() && !model.config.activation.is_piecewise_linear() {
        for s in p.max(q)..nl - 1 {
            // c_s = act''(z(s)) .* (W(s+1)^T delta(s+1)).
            let w = &model.layers[s + 1].weight;
            let delta = st.delta[s + 1].row(i);
            let c: Vec<f64> = (0..st.widths[s + 1])
                .map(|j| {
                    let dl_dx: f64 = (0..w.rows()).map(|a| w.get(a, j) * delta[a]).sum();
                    st.ddact[s].get(i, j) * dl_dx
                })
                .collect();
            let gs = partial_g(model, st, s, i);
            let mut right = gs[p].clone();
            for (r, &cr) in c.iter().enumerate() {
                for v in right.row_mut(r) {
                    *v *= cr;
                }
            }
            let term = matmul(gs[q].t(), right.view());
            m.axpy(1.0, &term);
        }
    }
    m
}

/// Fills the first `rows` rows of `out` (one row per sample) in parallel.
fn fill_rows(out: &mut Matrix<f64>, rows: usize, f: impl Fn(usize, &mut [f64]) + Sync) {
    let cols = out.cols();
    if cols == 0 {
        return;
    }
    out.as_mut_slice()[..rows * cols]
        .par_chunks_mut(cols)
        .enumerate()
        .for_each(|(i, row)| f(i, row));
}

/// The columns of the Kronecker input stack of block `(q, p)`: every pair `(b, e)`
/// of augmented inputs, or on a diagonal block (`q == p`) only `b <= e`.
///
/// A diagonal block is symmetric: its entry `((a, b), (c, e))` is
/// `sum_i M_i[a, c] x_b x_e` and `M_i(p, p)` is symmetric, so the entry equals
/// `((c, e), (a, b))`. Computing only `b <= e` halves the block's GEMM (the
/// largest one of the assembly), and the block comes out exactly symmetric.
fn input_pairs(nq: usize, np: usize, diagonal: bool) -> Vec<(usize, usize)> {
    (0..nq)
        .flat_map(|b| (if diagonal { b } else { 0 }..np).map(move |e| (b, e)))
        .collect()
}

/// The largest chunk's sample count: the row count of the per-chunk stacks.
fn max_chunk(ctx: &Context) -> usize {
    ctx.chunks
        .iter()
        .map(|(st, _)| st.num_samples())
        .max()
        .unwrap_or(0)
}

/// Buffers of the block GEMMs (the pair result and the two per-chunk stacks), kept
/// across blocks: fresh buffers cost kernel page zeroing on first touch, which was
/// the largest and most variable part of the dense assembly's wall time.
#[derive(Default)]
struct Scratch {
    pair: Vec<f64>,
    lhs: Vec<f64>,
    rhs: Vec<f64>,
}

impl Scratch {
    /// Buffers large enough for every block of `pairs` (`q <= p`), allocated once:
    /// growing them block by block would reallocate, and the freed smaller buffers
    /// would add to the peak memory.
    fn for_blocks(ctx: &Context, part: Part, pairs: &[(usize, usize)]) -> Self {
        let lay = &ctx.layout;
        let m = max_chunk(ctx);
        let (mut pair, mut lhs, mut rhs) = (0, 0, 0);
        for &(q, p) in pairs {
            let (dq, dp) = (lay.widths[q + 1], lay.widths[p + 1]);
            let (nq, np) = (lay.augmented_in(q), lay.augmented_in(p));
            let cols = input_pairs(nq, np, q == p).len();
            pair = pair.max(dq * dp * cols);
            lhs = lhs.max(m * dq * dp);
            rhs = rhs.max(m * cols);
            if part.hterm() && p > q {
                // The cross block with rows W(p) and columns layer q.
                let (dr, nr) = (dp, lay.widths[p]);
                pair = pair.max(dr * nq * nr * dq);
                lhs = lhs.max(m * dr * nq);
                rhs = rhs.max(m * nr * dq);
            }
        }
        Self {
            pair: Vec::with_capacity(pair),
            lhs: Vec::with_capacity(lhs),
            rhs: Vec::with_capacity(rhs),
        }
    }
}

/// A zeroed `rows x cols` matrix in `buf`'s storage (returned with [`Matrix::into_vec`]).
fn take_zeroed(buf: &mut Vec<f64>, rows: usize, cols: usize) -> Matrix<f64> {
    let mut v = std::mem::take(buf);
    v.clear();
    v.resize(rows * cols, 0.0);
    Matrix::from_vec(rows, cols, v)
}

/// A `P_q x P_p` block of a larger matrix, at row `r0` and column `c0`.
struct BlockMut<'a> {
    m: &'a mut Matrix<f64>,
    r0: usize,
    c0: usize,
}

impl BlockMut<'_> {
    fn set(&mut self, r: usize, c: usize, v: f64) {
        self.m.set(self.r0 + r, self.c0 + c, v);
    }
    fn add(&mut self, r: usize, c: usize, v: f64) {
        let (i, j) = (self.r0 + r, self.c0 + c);
        self.m.set(i, j, self.m.get(i, j) + v);
    }
}

/// Writes curvature block `(q, p)`, `q <= p`, in parameter order (`P_q x P_p`), not
/// yet divided by `m`, to `dst` (every entry is set).
fn curvature_block(
    ctx: &Context,
    part: Part,
    q: usize,
    p: usize,
    scratch: &mut Scratch,
    dst: &mut BlockMut,
) {
    let lay = &ctx.layout;
    let (dq, dp) = (lay.widths[q + 1], lay.widths[p + 1]);
    let (nq, np) = (lay.augmented_in(q), lay.augmented_in(p));
    let cols = input_pairs(nq, np, q == p);
    let mut pair = take_zeroed(&mut scratch.pair, dq * dp, cols.len());
    let mut mstack = take_zeroed(&mut scratch.lhs, max_chunk(ctx), dq * dp);
    let mut xstack = take_zeroed(&mut scratch.rhs, max_chunk(ctx), cols.len());
    for (st, labels) in &ctx.chunks {
        let mc = st.num_samples();
        fill_rows(&mut mstack, mc, |i, row| {
            row.copy_from_slice(curvature_core(ctx, st, labels, part, q, p, i).as_slice());
        });
        fill_rows(&mut xstack, mc, |i, row| {
            let (xq, xp) = (st.inputs[q].row(i), st.inputs[p].row(i));
            for (v, &(b, e)) in row.iter_mut().zip(&cols) {
                let vb = if b < xq.len() { xq[b] } else { 1.0 };
                let ve = if e < xp.len() { xp[e] } else { 1.0 };
                *v = vb * ve;
            }
        });
        gemm(
            1.0,
            mstack.rows_view(0, mc).t(),
            xstack.rows_view(0, mc),
            1.0,
            &mut pair,
        );
    }
    // Pair layout [(a, c), (b, e)] -> parameter layout [(a, b), (c, e)]; on a
    // diagonal block also the mirrored entry [(c, e), (a, b)] (for b == e the
    // later write of the two, from row (c, a), wins on both sides).
    let local = |l: usize, a: usize, b: usize| lay.augmented_index(l, a, b) - lay.offsets[l];
    for a in 0..dq {
        for c in 0..dp {
            let src = pair.row(a * dp + c);
            for (&v, &(b, e)) in src.iter().zip(&cols) {
                let (r, col) = (local(q, a, b), local(p, c, e));
                dst.set(r, col, v);
                if q == p {
                    dst.set(col, r, v);
                }
            }
        }
    }
    scratch.pair = pair.into_vec();
    scratch.lhs = mstack.into_vec();
    scratch.rhs = xstack.into_vec();
}

/// Adds the H-term's cross block with rows `W(q)` and columns layer `p < q`
/// (`P_q x P_p`, parameter order), transposed, to `dst` (`P_p x P_q`, the block
/// `(p, q)`).
fn add_cross_block_transposed(
    ctx: &Context,
    q: usize,
    p: usize,
    scratch: &mut Scratch,
    dst: &mut BlockMut,
) {
    let lay = &ctx.layout;
    let (dq, dp) = (lay.widths[q + 1], lay.widths[p + 1]);
    let nq = lay.widths[q];
    let np = lay.augmented_in(p);
    let mut pair = take_zeroed(&mut scratch.pair, dq * np, nq * dp);
    let mut u = take_zeroed(&mut scratch.lhs, max_chunk(ctx), dq * np);
    let mut v = take_zeroed(&mut scratch.rhs, max_chunk(ctx), nq * dp);
    for (st, _) in &ctx.chunks {
        let mc = st.num_samples();
        fill_rows(&mut u, mc, |i, row| {
            let (d, xp) = (st.delta[q].row(i), st.inputs[p].row(i));
            for a in 0..dq {
                for e in 0..np {
                    row[a * np + e] = d[a] * if e < xp.len() { xp[e] } else { 1.0 };
                }
            }
        });
        fill_rows(&mut v, mc, |i, row| {
            row.copy_from_slice(st.b_of(ctx.model, q, p, i).as_slice());
        });
        gemm(
            1.0,
            u.rows_view(0, mc).t(),
            v.rows_view(0, mc),
            1.0,
            &mut pair,
        );
    }
    for a in 0..dq {
        for e in 0..np {
            let src = pair.row(a * np + e);
            for b in 0..nq {
                let r = lay.weight_index(q, a, b) - lay.offsets[q];
                for c in 0..dp {
                    let col = lay.augmented_index(p, c, e) - lay.offsets[p];
                    dst.add(col, r, src[b * dp + c]);
                }
            }
        }
    }
    scratch.pair = pair.into_vec();
    scratch.lhs = u.into_vec();
    scratch.rhs = v.into_vec();
}

/// Block `(q, p)` (rows: layer `q`'s parameters, columns: layer `p`'s) of the
/// mean Hessian part over the rows of `x`, in parameter order.
pub fn hessian_block(
    model: &Mlp<f64>,
    x: &Matrix<f64>,
    labels: &[usize],
    part: Part,
    q: usize,
    p: usize,
) -> Result<Matrix<f64>> {
    let ctx = Context::new(model, x, labels)?;
    let nl = ctx.layout.num_layers();
    if q >= nl || p >= nl {
        return Err(Error::InvalidArgument(format!(
            "layer index out of range: the model has {nl} layers"
        )));
    }
    let mut b = block_of(&ctx, part, q.min(p), q.max(p), &mut Scratch::default());
    let s = 1.0 / ctx.m_total as f64;
    for v in b.as_mut_slice() {
        *v *= s;
    }
    Ok(if q > p { b.transpose() } else { b })
}

/// Writes block `(q, p)`, `q <= p`, not yet divided by `m`, to `dst`.
fn write_block(
    ctx: &Context,
    part: Part,
    q: usize,
    p: usize,
    scratch: &mut Scratch,
    dst: &mut BlockMut,
) {
    curvature_block(ctx, part, q, p, scratch, dst);
    if part.hterm() && p > q {
        // The (q, p) block holds the transpose of the cross block with rows W(p).
        add_cross_block_transposed(ctx, p, q, scratch, dst);
    }
}

/// Block `(q, p)`, `q <= p`, not yet divided by `m`, as its own matrix.
fn block_of(ctx: &Context, part: Part, q: usize, p: usize, scratch: &mut Scratch) -> Matrix<f64> {
    let lay = &ctx.layout;
    let mut b = Matrix::zeros(lay.layer_size(q), lay.layer_size(p));
    write_block(
        ctx,
        part,
        q,
        p,
        scratch,
        &mut BlockMut {
            m: &mut b,
            r0: 0,
            c0: 0,
        },
    );
    b
}

/// The dense mean Hessian part over the rows of `x` (`P x P`, parameter order).
///
/// Fails before allocating if it needs more than `budget_bytes`.
pub fn dense_hessian(
    model: &Mlp<f64>,
    x: &Matrix<f64>,
    labels: &[usize],
    part: Part,
    budget_bytes: usize,
) -> Result<Matrix<f64>> {
    let layout = ParamLayout::of(model);
    let need = dense_bytes(&layout);
    if need > budget_bytes {
        return Err(Error::InvalidArgument(format!(
            "the dense Hessian of P = {} parameters needs {:.2} GiB, over the memory budget of {:.2} GiB; use the matrix-free mode (--top/--bottom/--trace without --dense) or raise --memory-budget",
            layout.total,
            need as f64 / (1u64 << 30) as f64,
            budget_bytes as f64 / (1u64 << 30) as f64
        )));
    }
    let ctx = Context::new(model, x, labels)?;
    let nl = layout.num_layers();
    let total = layout.total;
    let mut h = Matrix::zeros(total, total);
    let s = 1.0 / ctx.m_total as f64;
    let pairs: Vec<(usize, usize)> = (0..nl).flat_map(|q| (q..nl).map(move |p| (q, p))).collect();
    // Several MPI ranks: one layer-pair block per work item (each block is computed
    // as one process computes it, so the matrix is the same bit for bit); every rank
    // gets every block.
    let mut blocks: Vec<Option<Vec<f64>>> = if crate::dist::distributed() && pairs.len() > 1 {
        crate::dist::map_items(
            pairs.len(),
            |i| {
                let (q, p) = pairs[i];
                Ok::<_, Error>(block_of(&ctx, part, q, p, &mut Scratch::default()).into_vec())
            },
            || {},
        )?
        .into_iter()
        .map(Some)
        .collect()
    } else {
        vec![None; pairs.len()]
    };
    let mut scratch = if blocks.iter().all(Option::is_some) {
        Scratch::default()
    } else {
        Scratch::for_blocks(&ctx, part, &pairs)
    };
    for (&(q, p), done) in pairs.iter().zip(blocks.iter_mut()) {
        let (oq, op) = (layout.offsets[q], layout.offsets[p]);
        let (pq, pp) = (layout.layer_size(q), layout.layer_size(p));
        // The block is assembled in place, in the upper triangle of `h`.
        let mut dst = BlockMut {
            m: &mut h,
            r0: oq,
            c0: op,
        };
        match done.take() {
            Some(v) => {
                for (r, row) in v.chunks_exact(pp.max(1)).enumerate().take(pq) {
                    for (c, &x) in row.iter().enumerate() {
                        dst.set(r, c, x);
                    }
                }
            }
            None => write_block(&ctx, part, q, p, &mut scratch, &mut dst),
        }
        // Divide by m and mirror to the lower triangle (a diagonal block is
        // symmetric: only its upper triangle is read).
        for r in 0..pq {
            let c_start = if q == p { r } else { 0 };
            for c in c_start..pp {
                let v = h.get(oq + r, op + c) * s;
                h.set(oq + r, op + c, v);
                h.set(op + c, oq + r, v);
            }
        }
    }
    Ok(h)
}
