//! A reverse-mode autodiff tape whose backward pass is itself recorded.
//!
//! Every operation appends a node (its value and how it was made) to the tape.
//! [`Tape::grad`] walks the nodes backwards and builds each vector-Jacobian
//! product *out of tape operations*, so the gradients it returns are ordinary
//! [`Var`]s: differentiating them again gives Hessian-vector products (double
//! backward) and gradients of gradient norms. Constants (data, labels, masks)
//! are leaves that do not require gradients and are skipped.
//!
//! Shapes are checked when an operation is recorded; a mismatch is a
//! programming error and panics with both shapes.

use super::batchnorm::{self, BnStats};
use super::conv::{self, ConvGeom};
use super::index_map::IndexMap;
use crate::tensor::{matmul_new, Matrix, Par, Scalar};
use rayon::prelude::*;
use std::cell::{Ref, RefCell};
use std::sync::Arc;

/// How a node was computed. Inputs are node ids on the same tape.
#[derive(Clone, Debug)]
enum Op<T> {
    Leaf,
    /// `op_a(A) op_b(B)`, where `op_x` transposes when its flag is set.
    MatMul {
        a: usize,
        b: usize,
        ta: bool,
        tb: bool,
    },
    Add(usize, usize),
    Sub(usize, usize),
    /// Elementwise product.
    Mul(usize, usize),
    /// Elementwise product with a constant matrix (ReLU masks, one-hot labels).
    MulConst(usize, Arc<Matrix<T>>),
    Scale(usize, T),
    AddScalar(usize, T),
    Square(usize),
    Exp(usize),
    Log(usize),
    Tanh(usize),
    Sqrt(usize),
    Recip(usize),
    /// Repeat a `1 x c`, `r x 1` or `1 x 1` input to the node's shape.
    Broadcast(usize),
    /// Sum over the axes where the node's shape is 1 (adjoint of `Broadcast`).
    SumTo(usize),
    /// `out.flat[j] = in.flat[map[j]]` (0 where the map has no source): im2col,
    /// pooling selections, layout permutations. Linear; its adjoint is `ScatterAdd`.
    Gather(usize, Arc<IndexMap>),
    /// `out.flat[s] = sum_{j: map[j] = s} in.flat[j]` (adjoint of `Gather`).
    ScatterAdd(usize, Arc<IndexMap>),
    /// The same values in row-major order with another shape.
    Reshape(usize),
    /// `x + broadcast(row)` for an `n x d` `x` and a `1 x d` row.
    AddRow(usize, usize),
    /// `x .* broadcast(row)` for an `n x d` `x` and a `1 x d` row.
    MulRow(usize, usize),
    /// `sum_to(1, d)(a .* b)`: column sums of an elementwise product (`1 x d`).
    ColDot(usize, usize),
    /// Training-mode BatchNorm's normalisation `xhat` of `x` per column
    /// ([`super::batchnorm`]), with the statistics it used.
    BnNormalize {
        x: usize,
        eps: f64,
        stats: Arc<BnStats<T>>,
    },
    /// `B(g)`, the backward map of the normalisation node `y` of `x` applied to `g`.
    /// Its inputs are `x` and `g`; `y` is read for its value (a function of `x`).
    BnBackward {
        x: usize,
        y: usize,
        g: usize,
        eps: f64,
        stats: Arc<BnStats<T>>,
    },
    /// `conv(X, W)` (see [`super::conv`]): NHWC images, PyTorch's weight matrix.
    Conv {
        x: usize,
        w: usize,
        geom: Arc<ConvGeom>,
    },
    /// `conv_data(D, W)`: the adjoint of `conv(., W)`.
    ConvData {
        d: usize,
        w: usize,
        geom: Arc<ConvGeom>,
    },
    /// `conv_weight(X, D)`: the adjoint of `conv(X, .)`.
    ConvWeight {
        x: usize,
        d: usize,
        geom: Arc<ConvGeom>,
    },
}

struct Node<T> {
    value: Matrix<T>,
    op: Op<T>,
    requires_grad: bool,
}

/// The recording. Create one per computation (e.g. per minibatch) and drop it after.
pub struct Tape<T: Scalar> {
    nodes: RefCell<Vec<Node<T>>>,
}

/// Handle to a node on a tape.
#[derive(Clone, Copy)]
pub struct Var<'t, T: Scalar> {
    tape: &'t Tape<T>,
    id: usize,
}

impl<T: Scalar> Default for Tape<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Scalar> Tape<T> {
    pub fn new() -> Self {
        Self {
            nodes: RefCell::new(Vec::new()),
        }
    }

    /// Number of recorded nodes.
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The handle of node `id` (an id returned by [`Var::id`] on this tape).
    pub fn var(&self, id: usize) -> Var<'_, T> {
        assert!(id < self.len(), "tape: no node {id}");
        Var { tape: self, id }
    }

    /// Removes every node from `len` on, so that a tape holding a recorded
    /// computation can be extended and cut back again (the products of
    /// [`hvp_on`]). Handles to the removed nodes must not be used afterwards.
    pub fn truncate(&self, len: usize) {
        self.nodes.borrow_mut().truncate(len);
    }

    /// Bytes held by the recorded values.
    pub fn value_bytes(&self) -> usize {
        self.nodes
            .borrow()
            .iter()
            .map(|n| n.value.len() * std::mem::size_of::<T>())
            .sum()
    }

    fn push(&self, value: Matrix<T>, op: Op<T>, requires_grad: bool) -> Var<'_, T> {
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(Node {
            value,
            op,
            requires_grad,
        });
        Var {
            tape: self,
            id: nodes.len() - 1,
        }
    }

    /// A differentiable input (a parameter).
    pub fn param(&self, value: Matrix<T>) -> Var<'_, T> {
        self.push(value, Op::Leaf, true)
    }

    /// A constant input (data, labels): gradients do not flow into it.
    pub fn constant(&self, value: Matrix<T>) -> Var<'_, T> {
        self.push(value, Op::Leaf, false)
    }

    fn shape(&self, id: usize) -> (usize, usize) {
        self.nodes.borrow()[id].value.shape()
    }

    fn requires(&self, id: usize) -> bool {
        self.nodes.borrow()[id].requires_grad
    }

    /// Records a unary op whose value is `f(input value)`.
    fn unary(&self, a: usize, op: Op<T>, f: impl Fn(&Matrix<T>) -> Matrix<T>) -> Var<'_, T> {
        let (value, rg) = {
            let nodes = self.nodes.borrow();
            (f(&nodes[a].value), nodes[a].requires_grad)
        };
        self.push(value, op, rg)
    }

    fn binary(
        &self,
        a: usize,
        b: usize,
        op: Op<T>,
        f: impl Fn(&Matrix<T>, &Matrix<T>) -> Matrix<T>,
    ) -> Var<'_, T> {
        let (value, rg) = {
            let nodes = self.nodes.borrow();
            (
                f(&nodes[a].value, &nodes[b].value),
                nodes[a].requires_grad || nodes[b].requires_grad,
            )
        };
        self.push(value, op, rg)
    }

    /// Gradients of the scalar `y` (a `1 x 1` node) with respect to `wrt`.
    ///
    /// The result is recorded on the tape, so it can be differentiated again.
    /// Inputs that `y` does not depend on get a zero matrix of their shape.
    pub fn grad<'t>(&'t self, y: Var<'t, T>, wrt: &[Var<'t, T>]) -> Vec<Var<'t, T>> {
        assert_eq!(
            self.shape(y.id),
            (1, 1),
            "grad: output must be a 1 x 1 scalar"
        );
        let seed = self.constant(Matrix::filled(1, 1, T::ONE));
        self.vjp(y, seed, wrt)
    }

    /// Vector-Jacobian product: `sum(cotangent * dy/dx)` for each `x` in `wrt`,
    /// where `cotangent` has the shape of `y`.
    pub fn vjp<'t>(
        &'t self,
        y: Var<'t, T>,
        cotangent: Var<'t, T>,
        wrt: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        assert_eq!(
            self.shape(y.id),
            self.shape(cotangent.id),
            "vjp: cotangent shape differs from output"
        );
        let n = y.id + 1;
        // Which nodes lie on a path from a `wrt` input to `y`.
        let mut on_path = vec![false; n];
        for w in wrt {
            if w.id < n {
                on_path[w.id] = true;
            }
        }
        {
            let nodes = self.nodes.borrow();
            for i in 0..n {
                if on_path[i] {
                    continue;
                }
                on_path[i] =
                    nodes[i].requires_grad && inputs_of(&nodes[i].op).iter().any(|&j| on_path[j]);
            }
        }
        let mut grads: Vec<Option<Var<'t, T>>> = vec![None; n];
        grads[y.id] = Some(cotangent);
        for i in (0..n).rev() {
            let Some(g) = grads[i] else { continue };
            if !on_path[i] {
                continue;
            }
            let op = self.nodes.borrow()[i].op.clone();
            let out = Var { tape: self, id: i };
            for (input, contrib) in self.backward_op(&op, out, g, &on_path) {
                grads[input] = Some(match grads[input] {
                    Some(acc) => acc.add(contrib),
                    None => contrib,
                });
            }
        }
        wrt.iter()
            .map(|w| match grads.get(w.id).copied().flatten() {
                Some(g) => g,
                None => {
                    let (r, c) = self.shape(w.id);
                    self.constant(Matrix::zeros(r, c))
                }
            })
            .collect()
    }

    /// Input cotangents of one node, as tape operations.
    fn backward_op<'t>(
        &'t self,
        op: &Op<T>,
        out: Var<'t, T>,
        g: Var<'t, T>,
        on_path: &[bool],
    ) -> Vec<(usize, Var<'t, T>)> {
        let v = |id: usize| Var { tape: self, id };
        let two = T::ONE + T::ONE;
        let mut res = Vec::with_capacity(2);
        match op {
            Op::Leaf => {}
            Op::MatMul { a, b, ta, tb } => {
                let (a, b, ta, tb) = (*a, *b, *ta, *tb);
                if on_path[a] {
                    let da = if ta {
                        v(b).matmul_t(g, tb, true)
                    } else {
                        g.matmul_t(v(b), false, !tb)
                    };
                    res.push((a, da));
                }
                if on_path[b] {
                    let db = if tb {
                        g.matmul_t(v(a), true, ta)
                    } else {
                        v(a).matmul_t(g, !ta, false)
                    };
                    res.push((b, db));
                }
            }
            Op::Add(a, b) => {
                res.push((*a, g));
                res.push((*b, g));
            }
            Op::Sub(a, b) => {
                res.push((*a, g));
                if on_path[*b] {
                    res.push((*b, g.neg()));
                }
            }
            Op::Mul(a, b) => {
                if on_path[*a] {
                    res.push((*a, g.mul(v(*b))));
                }
                if on_path[*b] {
                    res.push((*b, g.mul(v(*a))));
                }
            }
            Op::MulConst(a, c) => res.push((*a, g.mul_const(c.clone()))),
            Op::Scale(a, s) => res.push((*a, g.scale(*s))),
            Op::AddScalar(a, _) => res.push((*a, g)),
            Op::Square(a) => res.push((*a, g.mul(v(*a).scale(two)))),
            Op::Exp(a) => res.push((*a, g.mul(out))),
            Op::Log(a) => res.push((*a, g.mul(v(*a).recip()))),
            Op::Tanh(a) => {
                // d tanh = 1 - tanh^2, written with the output so it stays differentiable.
                let d = out.square().scale(-T::ONE).add_scalar(T::ONE);
                res.push((*a, g.mul(d)));
            }
            Op::Sqrt(a) => res.push((*a, g.mul(out.recip().scale(T::ONE / two)))),
            Op::Recip(a) => res.push((*a, g.mul(out.square().scale(-T::ONE)))),
            Op::Broadcast(a) => {
                let (r, c) = self.shape(*a);
                res.push((*a, g.sum_to(r, c)));
            }
            Op::SumTo(a) => {
                let (r, c) = self.shape(*a);
                res.push((*a, g.broadcast(r, c)));
            }
            Op::Gather(a, map) => {
                let (r, c) = self.shape(*a);
                res.push((*a, g.scatter_add(map.clone(), r, c)));
            }
            Op::ScatterAdd(a, map) => {
                let (r, c) = self.shape(*a);
                res.push((*a, g.gather(map.clone(), r, c)));
            }
            Op::Reshape(a) => {
                let (r, c) = self.shape(*a);
                res.push((*a, g.reshape(r, c)));
            }
            Op::AddRow(x, r) => {
                res.push((*x, g));
                if on_path[*r] {
                    let (_, d) = self.shape(*r);
                    res.push((*r, g.sum_to(1, d)));
                }
            }
            Op::MulRow(x, r) => {
                if on_path[*x] {
                    res.push((*x, g.mul_row(v(*r))));
                }
                if on_path[*r] {
                    res.push((*r, g.col_dot(v(*x))));
                }
            }
            Op::ColDot(a, b) => {
                if on_path[*a] {
                    res.push((*a, v(*b).mul_row(g)));
                }
                if on_path[*b] {
                    res.push((*b, v(*a).mul_row(g)));
                }
            }
            Op::BnNormalize { x, eps, stats } => {
                res.push((*x, g.bn_backward(v(*x), out, *eps, stats.clone())));
            }
            Op::BnBackward {
                x,
                y,
                g: gin,
                eps,
                stats,
            } => {
                if on_path[*gin] {
                    // g -> B(g) is self-adjoint.
                    res.push((*gin, g.bn_backward(v(*x), v(*y), *eps, stats.clone())));
                }
                if on_path[*x] {
                    res.push((*x, bn_backward_x(v(*x), v(*y), v(*gin), g, *eps)));
                }
            }
            Op::Conv { x, w, geom } => {
                if on_path[*x] {
                    res.push((*x, g.conv2d_data(v(*w), geom.clone())));
                }
                if on_path[*w] {
                    res.push((*w, v(*x).conv2d_weight(g, geom.clone())));
                }
            }
            Op::ConvData { d, w, geom } => {
                if on_path[*d] {
                    res.push((*d, g.conv2d(v(*w), geom.clone())));
                }
                if on_path[*w] {
                    res.push((*w, g.conv2d_weight(v(*d), geom.clone())));
                }
            }
            Op::ConvWeight { x, d, geom } => {
                if on_path[*d] {
                    res.push((*d, v(*x).conv2d(g, geom.clone())));
                }
                if on_path[*x] {
                    res.push((*x, v(*d).conv2d_data(g, geom.clone())));
                }
            }
        }
        res.retain(|(i, _)| on_path[*i]);
        res
    }
}

fn inputs_of<T>(op: &Op<T>) -> Vec<usize> {
    match op {
        Op::Leaf => vec![],
        Op::MatMul { a, b, .. } | Op::Add(a, b) | Op::Sub(a, b) | Op::Mul(a, b) => vec![*a, *b],
        Op::AddRow(a, b) | Op::MulRow(a, b) | Op::ColDot(a, b) => vec![*a, *b],
        Op::BnNormalize { x, .. } => vec![*x],
        Op::BnBackward { x, g, .. } => vec![*x, *g],
        Op::Conv { x: a, w: b, .. }
        | Op::ConvData { d: a, w: b, .. }
        | Op::ConvWeight { x: a, d: b, .. } => vec![*a, *b],
        Op::MulConst(a, _)
        | Op::Scale(a, _)
        | Op::AddScalar(a, _)
        | Op::Square(a)
        | Op::Exp(a)
        | Op::Log(a)
        | Op::Tanh(a)
        | Op::Sqrt(a)
        | Op::Recip(a)
        | Op::Broadcast(a)
        | Op::SumTo(a)
        | Op::Gather(a, _)
        | Op::ScatterAdd(a, _)
        | Op::Reshape(a) => vec![*a],
    }
}

/// `d/dx <u, B_x(g)>` for the BatchNorm backward map `B` (see [`super::batchnorm`]),
/// per column, as tape operations (so it is differentiable again):
/// `-s^2 [ (c - 3 m p) xhat + p (g - mean(g)) + m (u - mean(u)) ]` with
/// `m = mean(g xhat)`, `p = mean(u xhat)`, `c = mean(u g) - mean(u) mean(g)`,
/// `s^2 = 1 / (var(x) + eps)`; `s` and the means over the rows are rebuilt from `x`.
fn bn_backward_x<'t, T: Scalar>(
    x: Var<'t, T>,
    y: Var<'t, T>,
    g: Var<'t, T>,
    u: Var<'t, T>,
    eps: f64,
) -> Var<'t, T> {
    let (n, d) = x.shape();
    let inv_n = T::ONE / T::from_f64(n as f64);
    let mean_of = |a: Var<'t, T>| a.sum_to(1, d).scale(inv_n);
    let centred = x.add_row(mean_of(x).neg());
    let s2 = centred
        .col_dot(centred)
        .scale(inv_n)
        .add_scalar(T::from_f64(eps))
        .recip();
    let (g_mean, u_mean) = (mean_of(g), mean_of(u));
    let m = g.col_dot(y).scale(inv_n);
    let p = u.col_dot(y).scale(inv_n);
    let c = u.col_dot(g).scale(inv_n).sub(u_mean.mul(g_mean));
    let coef = c.sub(m.mul(p).scale(T::from_f64(3.0)));
    let term = y
        .mul_row(coef)
        .add(g.add_row(g_mean.neg()).mul_row(p))
        .add(u.add_row(u_mean.neg()).mul_row(m));
    term.mul_row(s2.neg())
}

/// `out[i, j] = f(a[i, j], row[0, j])`, split over rayon in whole rows.
fn row_map<T: Scalar>(a: &Matrix<T>, row: &Matrix<T>, f: impl Fn(T, T) -> T + Sync) -> Matrix<T> {
    let (n, d) = a.shape();
    assert_eq!(
        row.shape(),
        (1, d),
        "row op: a 1x{d} row is needed for a {n}x{d} matrix, got {:?}",
        row.shape()
    );
    if n * d == 0 {
        return Matrix::zeros(n, d);
    }
    let r = row.as_slice();
    let rows_per_task = ((1 << 15) / d).max(1);
    let mut data: Vec<T> = Vec::with_capacity(n * d);
    data.spare_capacity_mut()[..n * d]
        .par_chunks_mut(rows_per_task * d)
        .zip(a.as_slice().par_chunks(rows_per_task * d))
        .for_each(|(out, src)| {
            for (o_row, a_row) in out.chunks_exact_mut(d).zip(src.chunks_exact(d)) {
                for ((o, &x), &y) in o_row.iter_mut().zip(a_row).zip(r) {
                    o.write(f(x, y));
                }
            }
        });
    // SAFETY: the n d slots were all written above.
    unsafe { data.set_len(n * d) };
    Matrix::from_vec(n, d, data)
}

fn check_same_shape(what: &str, a: (usize, usize), b: (usize, usize)) {
    assert_eq!(a, b, "{what}: shapes {a:?} and {b:?} differ");
}

// Named methods (`add`, `mul`, ...) rather than operator traits keep every
// recorded operation visible at the call site.
#[allow(clippy::should_implement_trait)]
impl<'t, T: Scalar> Var<'t, T> {
    pub fn id(&self) -> usize {
        self.id
    }

    pub fn tape(&self) -> &'t Tape<T> {
        self.tape
    }

    /// Borrow of the node's value.
    pub fn value(&self) -> Ref<'t, Matrix<T>> {
        Ref::map(self.tape.nodes.borrow(), |n| &n[self.id].value)
    }

    pub fn shape(&self) -> (usize, usize) {
        self.tape.shape(self.id)
    }

    pub fn requires_grad(&self) -> bool {
        self.tape.requires(self.id)
    }

    /// Value of a `1 x 1` node.
    pub fn item(&self) -> T {
        self.value().item()
    }

    /// `self * other` (matrix product).
    pub fn matmul(self, other: Self) -> Self {
        self.matmul_t(other, false, false)
    }

    /// `op_a(self) * op_b(other)`, transposing through strides (no copies).
    pub fn matmul_t(self, other: Self, ta: bool, tb: bool) -> Self {
        self.tape.binary(
            self.id,
            other.id,
            Op::MatMul {
                a: self.id,
                b: other.id,
                ta,
                tb,
            },
            |a, b| {
                let av = if ta { a.t() } else { a.view() };
                let bv = if tb { b.t() } else { b.view() };
                assert_eq!(
                    av.cols(),
                    bv.rows(),
                    "matmul: inner dimensions differ ({}x{} * {}x{})",
                    av.rows(),
                    av.cols(),
                    bv.rows(),
                    bv.cols()
                );
                matmul_new(Par::Rayon, av, bv)
            },
        )
    }

    /// `self + broadcast(row)`: `row` is `1 x d`, `self` is `n x d` (no
    /// broadcast matrix is formed).
    pub fn add_row(self, row: Self) -> Self {
        self.tape
            .binary(self.id, row.id, Op::AddRow(self.id, row.id), |a, r| {
                row_map(a, r, |x, y| x + y)
            })
    }

    /// `self .* broadcast(row)`: `row` is `1 x d`, `self` is `n x d`.
    pub fn mul_row(self, row: Self) -> Self {
        self.tape
            .binary(self.id, row.id, Op::MulRow(self.id, row.id), |a, r| {
                row_map(a, r, |x, y| x * y)
            })
    }

    /// Column sums of `self .* other` as a `1 x d` row, summed in row order
    /// (the same bits as `self.mul(other).sum_to(1, d)`).
    pub fn col_dot(self, other: Self) -> Self {
        self.tape
            .binary(self.id, other.id, Op::ColDot(self.id, other.id), |a, b| {
                check_same_shape("col_dot", a.shape(), b.shape());
                let d = a.cols();
                let mut out = Matrix::zeros(1, d);
                let acc = out.as_mut_slice();
                for (ra, rb) in a
                    .as_slice()
                    .chunks_exact(d.max(1))
                    .zip(b.as_slice().chunks_exact(d.max(1)))
                {
                    for ((o, &x), &y) in acc.iter_mut().zip(ra).zip(rb) {
                        *o += x * y;
                    }
                }
                out
            })
    }

    /// Training-mode BatchNorm's normalisation of the columns of `self`
    /// (`(x - mean) / sqrt(var + eps)`, biased variance; [`super::batchnorm`]) as one
    /// fused node, and the statistics it used.
    pub fn bn_normalize(self, eps: f64) -> (Self, BnStats<T>) {
        let (value, stats) = batchnorm::normalize(&self.value(), eps);
        let out_stats = stats.clone();
        let op = Op::BnNormalize {
            x: self.id,
            eps,
            stats: Arc::new(stats),
        };
        let rg = self.requires_grad();
        (self.tape.push(value, op, rg), out_stats)
    }

    /// `B(self)`: the backward map of the normalisation `y` of `x` applied to `self`.
    fn bn_backward(self, x: Self, y: Self, eps: f64, stats: Arc<BnStats<T>>) -> Self {
        let value = {
            let (yv, gv) = (y.value(), self.value());
            batchnorm::backward(&yv, &gv, &stats.inv_std)
        };
        let rg = self.requires_grad() || x.requires_grad();
        let op = Op::BnBackward {
            x: x.id,
            y: y.id,
            g: self.id,
            eps,
            stats,
        };
        self.tape.push(value, op, rg)
    }

    /// `conv(self, w)`: `self` is the NHWC input (`rows_in x C_in`), `w` the
    /// `C_out x C_in k k` weight; the result is `rows_out x C_out`.
    pub fn conv2d(self, w: Self, geom: Arc<ConvGeom>) -> Self {
        let sh = geom.shape;
        check_same_shape("conv2d input", self.shape(), (sh.rows_in(), sh.c_in));
        check_same_shape("conv2d weight", w.shape(), (sh.c_out, sh.c_in * sh.taps()));
        let op = Op::Conv {
            x: self.id,
            w: w.id,
            geom: geom.clone(),
        };
        self.tape.binary(self.id, w.id, op, |x, wm| {
            let y = conv::conv_forward(&geom, x.as_slice(), wm.as_slice());
            Matrix::from_vec(sh.rows_out(), sh.c_out, y)
        })
    }

    /// `conv_data(self, w)`: `self` is an output gradient (`rows_out x C_out`);
    /// the result is the input gradient (`rows_in x C_in`).
    pub fn conv2d_data(self, w: Self, geom: Arc<ConvGeom>) -> Self {
        let sh = geom.shape;
        check_same_shape(
            "conv2d_data gradient",
            self.shape(),
            (sh.rows_out(), sh.c_out),
        );
        check_same_shape(
            "conv2d_data weight",
            w.shape(),
            (sh.c_out, sh.c_in * sh.taps()),
        );
        let op = Op::ConvData {
            d: self.id,
            w: w.id,
            geom: geom.clone(),
        };
        self.tape.binary(self.id, w.id, op, |d, wm| {
            let x = conv::conv_data(&geom, d.as_slice(), wm.as_slice());
            Matrix::from_vec(sh.rows_in(), sh.c_in, x)
        })
    }

    /// `conv_weight(self, d)`: `self` is the input (`rows_in x C_in`), `d` an
    /// output gradient; the result is the weight gradient (`C_out x C_in k k`).
    pub fn conv2d_weight(self, d: Self, geom: Arc<ConvGeom>) -> Self {
        let sh = geom.shape;
        check_same_shape("conv2d_weight input", self.shape(), (sh.rows_in(), sh.c_in));
        check_same_shape(
            "conv2d_weight gradient",
            d.shape(),
            (sh.rows_out(), sh.c_out),
        );
        let op = Op::ConvWeight {
            x: self.id,
            d: d.id,
            geom: geom.clone(),
        };
        self.tape.binary(self.id, d.id, op, |x, dm| {
            let w = conv::conv_weight(&geom, x.as_slice(), dm.as_slice());
            Matrix::from_vec(sh.c_out, sh.c_in * sh.taps(), w)
        })
    }

    pub fn add(self, other: Self) -> Self {
        self.tape
            .binary(self.id, other.id, Op::Add(self.id, other.id), |a, b| {
                check_same_shape("add", a.shape(), b.shape());
                a.par_zip_map(b, |x, y| x + y)
            })
    }

    pub fn sub(self, other: Self) -> Self {
        self.tape
            .binary(self.id, other.id, Op::Sub(self.id, other.id), |a, b| {
                check_same_shape("sub", a.shape(), b.shape());
                a.par_zip_map(b, |x, y| x - y)
            })
    }

    /// Elementwise product.
    pub fn mul(self, other: Self) -> Self {
        self.tape
            .binary(self.id, other.id, Op::Mul(self.id, other.id), |a, b| {
                check_same_shape("mul", a.shape(), b.shape());
                a.par_zip_map(b, |x, y| x * y)
            })
    }

    /// Elementwise product with a constant.
    pub fn mul_const(self, c: Arc<Matrix<T>>) -> Self {
        let cc = c.clone();
        self.tape
            .unary(self.id, Op::MulConst(self.id, c), move |a| {
                check_same_shape("mul_const", a.shape(), cc.shape());
                a.par_zip_map(&cc, |x, y| x * y)
            })
    }

    pub fn scale(self, s: T) -> Self {
        self.tape
            .unary(self.id, Op::Scale(self.id, s), |a| a.par_map(|x| x * s))
    }

    pub fn neg(self) -> Self {
        self.scale(-T::ONE)
    }

    pub fn add_scalar(self, s: T) -> Self {
        self.tape
            .unary(self.id, Op::AddScalar(self.id, s), |a| a.par_map(|x| x + s))
    }

    pub fn square(self) -> Self {
        self.tape
            .unary(self.id, Op::Square(self.id), |a| a.par_map(|x| x * x))
    }

    pub fn exp(self) -> Self {
        self.tape
            .unary(self.id, Op::Exp(self.id), |a| a.par_map(|x| x.exp()))
    }

    pub fn ln(self) -> Self {
        self.tape
            .unary(self.id, Op::Log(self.id), |a| a.par_map(|x| x.ln()))
    }

    pub fn tanh(self) -> Self {
        self.tape
            .unary(self.id, Op::Tanh(self.id), |a| a.par_map(|x| x.tanh()))
    }

    /// `1 / (1 + e^{-z}) = (1 + tanh(z / 2)) / 2`, built from differentiable ops.
    pub fn sigmoid(self) -> Self {
        let half = T::ONE / (T::ONE + T::ONE);
        self.scale(half).tanh().scale(half).add_scalar(half)
    }

    /// `ln(1 + e^z) = relu(z) + ln(1 + e^{-|z|})` (no overflow), built from
    /// differentiable ops; the masks are constants, so the first and second
    /// derivatives are exact away from `z = 0`, where both pieces are smooth anyway.
    pub fn softplus(self) -> Self {
        let sign = self
            .value()
            .map(|z| if z > T::ZERO { T::ONE } else { -T::ONE });
        let neg_abs = self.mul_const(Arc::new(sign)).scale(-T::ONE);
        self.relu().add(neg_abs.exp().add_scalar(T::ONE).ln())
    }

    pub fn sqrt(self) -> Self {
        self.tape
            .unary(self.id, Op::Sqrt(self.id), |a| a.par_map(|x| x.sqrt()))
    }

    pub fn recip(self) -> Self {
        self.tape
            .unary(self.id, Op::Recip(self.id), |a| a.par_map(|x| T::ONE / x))
    }

    /// Repeats a `1 x c`, `r x 1` or `1 x 1` value to `rows x cols`.
    pub fn broadcast(self, rows: usize, cols: usize) -> Self {
        self.tape.unary(self.id, Op::Broadcast(self.id), |a| {
            let (r, c) = a.shape();
            assert!(
                (r == rows || r == 1) && (c == cols || c == 1),
                "broadcast: cannot broadcast {r}x{c} to {rows}x{cols}"
            );
            if rows * cols == 0 {
                return Matrix::zeros(rows, cols);
            }
            let src = a.as_slice();
            // out[i, j] = a[i or 0, j or 0], written once (no zeroing first).
            let data: Vec<T> = (0..rows * cols)
                .into_par_iter()
                .with_min_len(1 << 15)
                .map(|e| {
                    let (i, j) = (e / cols, e % cols);
                    src[if r == 1 { 0 } else { i } * c + if c == 1 { 0 } else { j }]
                })
                .collect();
            Matrix::from_vec(rows, cols, data)
        })
    }

    /// Sums to `rows x cols`, each target dimension either kept or reduced to 1.
    /// Sums run in index order (row by row, then along each row).
    pub fn sum_to(self, rows: usize, cols: usize) -> Self {
        self.tape.unary(self.id, Op::SumTo(self.id), |a| {
            let (r, c) = a.shape();
            assert!(
                (rows == r || rows == 1) && (cols == c || cols == 1),
                "sum_to: cannot reduce {r}x{c} to {rows}x{cols}"
            );
            let mut out = Matrix::zeros(rows, cols);
            for i in 0..r {
                let arow = a.row(i);
                let orow = out.row_mut(if rows == 1 { 0 } else { i });
                if cols == 1 {
                    let mut acc = orow[0];
                    for &v in arow {
                        acc += v;
                    }
                    orow[0] = acc;
                } else {
                    for (o, &v) in orow.iter_mut().zip(arow) {
                        *o += v;
                    }
                }
            }
            out
        })
    }

    /// `out.flat[j] = self.flat[map[j]]` as a `rows x cols` matrix (zero where
    /// the map has no source). Linear, so twice differentiable.
    pub fn gather(self, map: Arc<IndexMap>, rows: usize, cols: usize) -> Self {
        let m = map.clone();
        self.tape
            .unary(self.id, Op::Gather(self.id, map), move |a| {
                assert_eq!(
                    a.len(),
                    m.src_len(),
                    "gather: source has {} elements, map expects {}",
                    a.len(),
                    m.src_len()
                );
                assert_eq!(
                    rows * cols,
                    m.len(),
                    "gather: {rows}x{cols} output for a map of {}",
                    m.len()
                );
                Matrix::from_vec(rows, cols, m.gather(a.as_slice()))
            })
    }

    /// Adjoint of [`Var::gather`]: sums each element into its source slot of a
    /// `rows x cols` matrix (a fixed order per slot, so deterministic).
    pub fn scatter_add(self, map: Arc<IndexMap>, rows: usize, cols: usize) -> Self {
        let m = map.clone();
        self.tape
            .unary(self.id, Op::ScatterAdd(self.id, map), move |a| {
                assert_eq!(
                    a.len(),
                    m.len(),
                    "scatter_add: input has {} elements, map has {}",
                    a.len(),
                    m.len()
                );
                assert_eq!(
                    rows * cols,
                    m.src_len(),
                    "scatter_add: {rows}x{cols} output for a source of {}",
                    m.src_len()
                );
                Matrix::from_vec(rows, cols, m.scatter_add(a.as_slice()))
            })
    }

    /// The same row-major values as a `rows x cols` matrix.
    pub fn reshape(self, rows: usize, cols: usize) -> Self {
        self.tape.unary(self.id, Op::Reshape(self.id), |a| {
            assert_eq!(
                a.len(),
                rows * cols,
                "reshape: {}x{} to {rows}x{cols}",
                a.rows(),
                a.cols()
            );
            Matrix::from_vec(rows, cols, a.as_slice().to_vec())
        })
    }

    /// Sum of all entries (`1 x 1`).
    pub fn sum(self) -> Self {
        self.sum_to(1, 1)
    }

    /// `sum(self .* other)` (`1 x 1`).
    pub fn dot(self, other: Self) -> Self {
        self.mul(other).sum()
    }

    /// ReLU as a product with the constant mask `[z > 0]` (second derivative 0).
    pub fn relu(self) -> Self {
        self.masked(|z| if z > T::ZERO { T::ONE } else { T::ZERO })
    }

    /// LeakyReLU as a product with the constant slope mask (`1` or `slope`).
    pub fn leaky_relu(self, slope: T) -> Self {
        self.masked(move |z| if z > T::ZERO { T::ONE } else { slope })
    }

    /// `self .* mask(self)` recorded as a product with the constant mask; the
    /// mask and the product are formed in one pass.
    fn masked(self, mask_of: impl Fn(T) -> T + Sync + Send) -> Self {
        let (mask, out) = {
            let z = self.value();
            let n = z.len();
            let mut mask: Vec<T> = Vec::with_capacity(n);
            let mut out: Vec<T> = Vec::with_capacity(n);
            mask.spare_capacity_mut()[..n]
                .par_chunks_mut(1 << 15)
                .zip(out.spare_capacity_mut()[..n].par_chunks_mut(1 << 15))
                .zip(z.as_slice().par_chunks(1 << 15))
                .for_each(|((m, o), zs)| {
                    for ((mi, oi), &zi) in m.iter_mut().zip(o.iter_mut()).zip(zs) {
                        let k = mask_of(zi);
                        mi.write(k);
                        oi.write(zi * k);
                    }
                });
            // SAFETY: all n slots of both were written above.
            unsafe {
                mask.set_len(n);
                out.set_len(n);
            }
            let (r, c) = z.shape();
            (Matrix::from_vec(r, c, mask), Matrix::from_vec(r, c, out))
        };
        let rg = self.requires_grad();
        self.tape
            .push(out, Op::MulConst(self.id, Arc::new(mask)), rg)
    }
}

/// A recorded loss and its gradient: the tape after the forward pass and the first
/// backward pass, with the ids of the parameter and gradient nodes.
pub struct Recorded<T: Scalar> {
    pub tape: Tape<T>,
    pub loss: usize,
    pub params: Vec<usize>,
    pub grads: Vec<usize>,
}

/// Records `f = build(params)` and `grad f` (recorded too, so it can be
/// differentiated again) on a new tape.
pub fn record_gradient<T: Scalar>(
    params: &[Matrix<T>],
    build: impl for<'t> Fn(&'t Tape<T>, &[Var<'t, T>]) -> Var<'t, T>,
) -> Recorded<T> {
    let tape = Tape::new();
    let (loss, params, grads) = {
        let vars: Vec<Var<T>> = params.iter().map(|p| tape.param(p.clone())).collect();
        let f = build(&tape, &vars);
        let g = tape.grad(f, &vars);
        (
            f.id,
            vars.iter().map(|v| v.id).collect(),
            g.iter().map(|v| v.id).collect(),
        )
    };
    Recorded {
        tape,
        loss,
        params,
        grads,
    }
}

/// `H v = d/dθ <∇f(θ), v>` on a [`Recorded`] gradient: records the inner product
/// and its gradient, reads the product, and cuts the tape back to the recording,
/// so the forward and first backward passes serve any number of directions.
/// The same operations, in the same order, as [`hvp`]: the same bits.
pub fn hvp_on<T: Scalar>(rec: &Recorded<T>, v: &[Matrix<T>]) -> Vec<Matrix<T>> {
    assert_eq!(
        rec.params.len(),
        v.len(),
        "hvp: one direction per parameter tensor"
    );
    let tape = &rec.tape;
    let len = tape.len();
    let hvals = {
        let vars: Vec<Var<T>> = rec.params.iter().map(|&i| tape.var(i)).collect();
        let mut inner: Option<Var<T>> = None;
        for (&gi, vi) in rec.grads.iter().zip(v) {
            let gi = tape.var(gi);
            check_same_shape("hvp direction", gi.shape(), vi.shape());
            let term = gi.dot(tape.constant(vi.clone()));
            inner = Some(match inner {
                Some(acc) => acc.add(term),
                None => term,
            });
        }
        let inner = inner.expect("hvp: no parameters");
        let hv = tape.grad(inner, &vars);
        hv.iter().map(|x| x.value().clone()).collect()
    };
    tape.truncate(len);
    hvals
}

/// Hessian-vector product by double backward: `H v = d/dθ <∇f(θ), v>`.
///
/// `build` records the scalar `f` on the tape from the parameter variables.
/// Returns `(f, ∇f, H v)` as plain matrices, one per parameter tensor.
pub fn hvp<T: Scalar>(
    params: &[Matrix<T>],
    v: &[Matrix<T>],
    build: impl for<'t> Fn(&'t Tape<T>, &[Var<'t, T>]) -> Var<'t, T>,
) -> (T, Vec<Matrix<T>>, Vec<Matrix<T>>) {
    assert_eq!(
        params.len(),
        v.len(),
        "hvp: one direction per parameter tensor"
    );
    let rec = record_gradient(params, build);
    let fval = rec.tape.var(rec.loss).item();
    let gvals = rec
        .grads
        .iter()
        .map(|&i| rec.tape.var(i).value().clone())
        .collect();
    let hvals = hvp_on(&rec, v);
    (fval, gvals, hvals)
}
